# blitzdns resolver-config install --target nrpt, stub on 127.0.0.1:53 and [::1]:53
Get-DnsClientNrptRule | Where-Object Comment -eq "blitzdns" | ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }
Add-DnsClientNrptRule -Namespace ".dartmouth.edu" -NameServers "127.0.0.1", "::1" -Comment "blitzdns" -DisplayName "blitzdns dartmouth.edu"
Clear-DnsClientCache
