# blitzdns resolver-config uninstall (after the nrpt target)
Get-DnsClientNrptRule | Where-Object Comment -eq "blitzdns" | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }
Clear-DnsClientCache
