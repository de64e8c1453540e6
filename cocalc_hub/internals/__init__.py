"""The one home for what the hub uses of other libraries beyond their public API.

Each module here names, in its docstring, every private attribute, method or behaviour
it relies on, and tests/internals/ checks that the installed versions
still have them (presence, signatures, and a round trip through the code that uses them),
failing with a message that names what went missing. setup.cfg bounds those libraries'
versions to the range these checks were written against.

* :mod:`.autobahn`: autobahn's WebSocket protocol (the conat transport's fast frame path,
  its lighter handshake and per-connection settings).
* :mod:`.twisted`: Twisted's TCP connection (writes sent at the end of a read, the proxy's
  direct writes to a backend) and its table of child processes (the project program's reaper).
"""
