# blitzdns guard uninstall --target windows
Get-NetFirewallRule -Group "blitzdns" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
