# Python 2.7: runs the Autobahn|Testsuite fuzzing client (autobahntestsuite 0.8.2) from a
# spec file, adding per-server HTTP headers (e.g. a session cookie) to the handshake,
# which the stock "wstest -m fuzzingclient" cannot do.
import json
import sys

from autobahntestsuite import fuzzing
from twisted.internet import reactor


class Factory(fuzzing.FuzzingClientFactory):
    def nextServer(self):
        ok = fuzzing.FuzzingClientFactory.nextServer(self)
        if ok:
            self.headers = self.spec["servers"][self.currServer].get("headers", {})
        return ok


Factory(json.load(open(sys.argv[1])))
reactor.run()
