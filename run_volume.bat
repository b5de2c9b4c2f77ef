@echo off
rem Catch the vault's volume bars up for BTC-USDT-SWAP and ETH-USDT-SWAP.
rem The vault folder is VSTREAM_VAULT (set it once: setx VSTREAM_VAULT D:\Vault), else .\Vault
rem in the folder this runs in. vstream reads the variable itself, so no --vault is passed
rem here (extra arguments are passed on, e.g. run_volume.bat --final or --vault D:\Other).
vstream replay --instId BTC-USDT-SWAP --instId ETH-USDT-SWAP %*
exit /b %ERRORLEVEL%
