# blitzdns guard install --target windows (lines run in order)
Get-NetFirewallRule -Group "blitzdns" -ErrorAction SilentlyContinue | Remove-NetFirewallRule
New-NetFirewallRule -DisplayName "blitzdns dnd tcp" -Group "blitzdns" -Direction Outbound -Action Block -Protocol TCP -RemoteAddress "198.51.100.2", "2001:db8::2" -RemotePort "902"
New-NetFirewallRule -DisplayName "blitzdns dasher tcp" -Group "blitzdns" -Direction Outbound -Action Block -Protocol TCP -RemoteAddress "198.51.100.3" -RemotePort "2151"
New-NetFirewallRule -DisplayName "blitzdns notify udp everywhere" -Group "blitzdns" -Direction Outbound -Action Block -Protocol UDP -RemotePort "2154"
