"""The commented starting file that ``blitzdns config init`` writes.

It parses to the same effective configuration as the built-in preset alone (a test
checks that), so a user can start from it and change only what they need.
"""

from __future__ import annotations

TEMPLATE = """\
# blitzdns configuration. `blitzdns config show` prints the effective result,
# `blitzdns plan` what it will answer and forward. Unknown keys are errors.

# The built-in table of hosts and services: "blitzmail" (Dartmouth's DND,
# BlitzMail reindeer servers and newshost) or "none" to start empty.
preset = "blitzmail"

[dns]
# Where the stub listens. Port 53 needs root or CAP_NET_BIND_SERVICE; with an
# unprivileged port, point a split-DNS resolver config at it (macOS,
# systemd-resolved and NetworkManager support a port).
listen = ["127.0.0.1:53"]
# Where other names go. Empty: read from the system (/run/systemd/resolve/resolv.conf,
# else /etc/resolv.conf), never from this stub itself.
upstreams = []
# TTL of the local answers, in seconds: low, so a stopped tunnel leaves no stale answers.
ttl = 5
# Forwarded answers cached (RFC 2308 negative caching included); 0 switches the cache off.
cache_size = 10000
# Clients that may use the stub; everyone else is REFUSED (no open resolver).
allow = ["127.0.0.0/8", "::1/128"]
# A dead upstream answers SERVFAIL within this many seconds.
timeout_s = 2.0

[tunnel]
# SSH gateways, tried in order; ~/.ssh/config (Host aliases, User, Port,
# IdentityFile, ProxyJump) applies. Example: ["jsmith@nimbus.dartmouth.edu"]
gateways = []
# The loopback block the per-host mouth addresses come from.
mouths = "127.77.0.0/24"
# Only these hosts are protected (empty: all of the table).
hosts = []
# Host keys are always checked; default: ~/.ssh/known_hosts.
# known_hosts = "~/.ssh/known_hosts"
# Seconds between keepalives (3 missed = link dead), and how long a new
# connection waits for a link that is down before it is closed.
keepalive_s = 15.0
wait_for_link_s = 10.0
# "asyncssh": the link runs in blitzdns (password and passphrase prompts).
# "openssh": an `ssh -M` master carries the data at OpenSSH's speed (keys or
# ssh-agent only; byte counts in `status` come from the kernel, Linux only).
backend = "asyncssh"

[resolver]
# Which resolver config `blitzdns resolver-config` writes by default:
# auto, macos, systemd-resolved, networkmanager, resolvconf, nrpt.
target = "auto"

# Services: a name, the port the mouth listens on, and optionally the target's
# port when it differs (remote_port). The preset defines dnd (902), mail (2151),
# bulletins (1119), posting (119) and notify (2154, UDP: not carried by SSH).
# [services]
# imap = { port = 143 }

# Hosts: names the stub answers (any letter case, with or without a trailing
# dot), the services tunneled for them, an optional pinned mouth, and the target
# as the gateway resolves it (default: the first name). A [hosts.X] here extends
# or overrides the preset's X.
# [hosts.dasher]
# names = ["dasher.dartmouth.edu", "dasher"]
# services = ["mail"]
# mouth = "127.77.0.2"
# remote = "dasher.dartmouth.edu"

# Local-IP mode: also offer some hosts on an address of this machine's LAN or VM
# bridge, to the client networks listed (one host per port on each address).
# [[shared]]
# address = "192.168.64.1"
# allow = ["192.168.64.0/24"]
# hosts = ["dnd", "dasher"]
# dns = true

# Network locations: overrides that apply where a rule matches (any rule; every
# key of a rule must hold). `blitzdns location` shows which one matches now.
# [locations.campus]
# match = [{ subnet = "129.170.0.0/16" }, { search_domain = "dartmouth.edu" }]
# gateways = ["jsmith@gateway-near-the-servers.dartmouth.edu"]
# [locations.home]
# match = [{ ssid = "MyHomeWifi" }]
# gateways = ["jsmith@nimbus.dartmouth.edu"]
"""
