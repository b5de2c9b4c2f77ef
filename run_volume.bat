@echo off
rem Catch the vault's volume bars up for BTC-USDT-SWAP and ETH-USDT-SWAP.
rem The vault folder comes from VSTREAM_VAULT (set it once: setx VSTREAM_VAULT D:\Vault).
if "%VSTREAM_VAULT%"=="" (
  echo run_volume: set VSTREAM_VAULT to your vault folder 1>&2
  exit /b 2
)
vstream replay --instId BTC-USDT-SWAP --instId ETH-USDT-SWAP --vault "%VSTREAM_VAULT%" %*
exit /b %ERRORLEVEL%
