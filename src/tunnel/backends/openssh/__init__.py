"""The ``openssh`` link backend: an OpenSSH ``ssh -M`` master carries the bytes.

asyncssh's pure-Python packet layer costs about twice OpenSSH's CPU per byte. With
``TunnelOptions.backend="openssh"`` the supervisor keeps one ``ssh -N -M -S <ctl>`` master
process alive instead, and each flow is handed to it over the control socket with the
multiplexing protocol (OpenSSH ``PROTOCOL.mux`` §1, §3, §4). One concern per module:

* :mod:`.mux`: the packet codec (pure);
* :mod:`.command`: the master's command line (pure);
* :mod:`.stderr`: why a master exited, from its last words (pure);
* :mod:`.tcpinfo`: bytes carried, from the kernel's counters of a socket;
* :mod:`.fdpass`: request and descriptors in one ``sendmmsg``;
* :mod:`.pool`: mux connections and the spares kept ahead of demand;
* :mod:`.master`: the process: start, liveness, stop;
* :mod:`.link`: :class:`~.link.MuxLink`, the :class:`tunnel.link.Link` of this backend.

Limits of this path, by construction:

* bytes are not seen here: they are read from the kernel's counters of the client socket
  (Linux ``TCP_INFO``; 0 elsewhere);
* the master receives two descriptors for the one socket, so a half-close *from the target*
  reaches the client only when the channel closes completely (as with ``ssh -W`` via mux);
* ``BatchMode=yes``: no password or passphrase prompts (keys and agent only); the options
  ``password``, ``password_prompt`` and ``passphrase`` are not used. A refused host key is
  named (fingerprint, the command to trust or remove it) by one more key exchange through
  the asyncssh backend (:func:`.master.name_the_key`).
"""
