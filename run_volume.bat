@echo off
rem run_volume.bat: catch the vault's volume bars up for BTC-USDT-SWAP and ETH-USDT-SWAP
rem (vstream replay, SPEC section 8). Double-click it, or have Task Scheduler run it every
rem few minutes.
rem
rem  - It runs the vstream of the .venv folder beside this file (see README), else the one
rem    on PATH.
rem  - The vault is VSTREAM_VAULT; set it once, in quotes, and open a new window:
rem      setx VSTREAM_VAULT "C:\Users\M.R Bear\Documents\RaveQuant\Rave_Quant_Vault"
rem    Without it, the Vault folder beside this file.
rem  - Extra arguments go on to vstream replay: run_volume.bat --final, or --vault "D:\Other".
rem  - Its exit status is vstream's: 0 done, 1 a failure, 2 a usage or configuration error.
rem  - Started by a double-click it waits for a key at the end, so that the window can be
rem    read; not in an open Command Prompt, not as a scheduled task. VSTREAM_NO_PAUSE=1 (set
rem    in the task's command, see README) makes sure it never waits.
rem
rem CRLF line ends (.gitattributes keeps them): cmd.exe misreads labels in a LF-only file.
setlocal
rem Task Scheduler starts it in C:\Windows\System32: the Vault beside it is meant, so go
rem there first (pushd, unlike cd, also takes a \\server\share folder).
pushd "%~dp0" || exit /b 1
set "STATUS=0"

set "VSTREAM_EXE=%~dp0.venv\Scripts\vstream.exe"
if exist "%VSTREAM_EXE%" goto have_vstream
set "VSTREAM_EXE=vstream.exe"
"%SystemRoot%\System32\where.exe" /q vstream.exe
if not errorlevel 1 goto have_vstream
>&2 echo run_volume.bat: vstream is not installed: in "%~dp0" run  python -m venv .venv  then  .venv\Scripts\pip install -e .  (or put vstream on PATH)
set "STATUS=1"
goto done

:have_vstream
set "VAULT_GIVEN="
for %%A in (%*) do if /i "%%~A"=="--vault" set "VAULT_GIVEN=1"
if defined VAULT_GIVEN goto run
if defined VSTREAM_VAULT goto run
if exist "Vault" goto run
>&2 echo run_volume.bat: no vault: VSTREAM_VAULT is not set and there is no Vault folder in "%~dp0"; set it once, in quotes, then open a new window: setx VSTREAM_VAULT "C:\Users\M.R Bear\Documents\RaveQuant\Rave_Quant_Vault"
set "STATUS=2"
goto done

:run
"%VSTREAM_EXE%" replay --instId BTC-USDT-SWAP --instId ETH-USDT-SWAP %*
set "STATUS=%ERRORLEVEL%"

:done
rem Wait for a key only when cmd.exe was started to run just this file (Explorer runs
rem cmd.exe /c "...\run_volume.bat"), in a desktop session (a scheduled task has no
rem SESSIONNAME), and not told otherwise.
if defined VSTREAM_NO_PAUSE if not "%VSTREAM_NO_PAUSE%"=="0" goto end
if not defined SESSIONNAME goto end
set "CMDLINE=%CMDCMDLINE:"=%"
echo("%CMDLINE%"| "%SystemRoot%\System32\find.exe" /i " /c " >nul || goto end
echo("%CMDLINE%"| "%SystemRoot%\System32\find.exe" /i "%~f0" >nul || goto end
pause

:end
popd
exit /b %STATUS%
