"""Third-party socket.io clients against the hub's conat broker, over real sockets.

* python-socketio's client (a subprocess: it blocks) speaking the conat events;
* npm ``socket.io-client`` 4.8.3 (node subprocesses, tests/node/interop.js) doing the conat
  framing by hand, frame for frame as the protocol spec shows it;
* node and this project's Python conat client talking to each other, including a message
  larger than the broker's 8 MB ``max_payload`` (chunked by the sender, put back together
  by the receiver).

The scripts print one JSON object with their observations; the tests compare exact values.
Scripts that write ``HOLD …`` to stderr wait (stdin) while the test looks at the broker.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.conat.broker import Broker
from cocalc_hub.conat.client import JSON, MSGPACK, Client, Message, connect
from tests.support import CI, REPO, RunningHub, settings_for, spawn, start_hub, until
from tests.web.api_client import ApiClient

NODE_DIR = REPO / "tests" / "node"
INTEROP_JS = NODE_DIR / "interop.js"
SIO_CLIENT = Path(__file__).resolve().parent / "sio_client.py"
MAX_PAYLOAD = 8_000_000
CHUNK = MAX_PAYLOAD - 100_000  # what clients put in one chunk (spec §3.3)
OPEN_FRAME = re.compile(r'0\{"sid":"[A-Za-z0-9_-]{20}","upgrades":\[\],"pingInterval":25000,'
                        r'"pingTimeout":20000,"maxPayload":8000000\}')
RANDOM_ID = re.compile(r"[A-Za-z0-9]{10}")


def _missing(problem: str) -> unittest.SkipTest:
    if CI:
        raise AssertionError(problem + " (CI=true: failing instead of skipping)")
    return unittest.SkipTest(problem)


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise _missing("node is not installed")
    if not (NODE_DIR / "node_modules" / "socket.io-client" / "package.json").exists():
        raise _missing("npm socket.io-client is not installed (make tests/node/node_modules/.installed)")
    return node


def require_python_socketio() -> None:
    if importlib.util.find_spec("socketio") is None or importlib.util.find_spec("websocket") is None:
        raise _missing("python-socketio[client] is not installed (pip install -e '.[test]')")


def hub_password(hub: RunningHub) -> str:
    return (hub.hub.settings.secrets_dir / "conat-password").read_text().strip()


def broker_of(hub: RunningHub) -> Broker:
    assert hub.hub.conat is not None
    return hub.hub.conat.broker


async def run_script(case: unittest.TestCase, argv: list[str],
                     on_hold: Callable[[str], Awaitable[None]] | None = None, timeout: float = 40.0) -> Any:
    """Run a script; call ``on_hold`` with what follows "HOLD " and let it go on; its JSON."""
    proc, transport = spawn(case, argv, cwd=str(REPO))
    if on_hold is not None:
        m = await proc.wait_for(rb"HOLD ([^\n]*)\n", timeout=timeout)
        await on_hold(m.group(1).decode())
        transport.write(b"go\n")
    ended: defer.Deferred[int] = defer.Deferred()

    def exited(code: int) -> int:
        if not ended.called:
            ended.callback(code)
        return code

    proc.ended.addCallback(exited)
    def too_slow() -> None:
        if not ended.called:
            output = proc.output.decode(errors="replace")[-4000:]
            ended.errback(AssertionError(f"{argv[1]} did not finish in {timeout} s; output:\n{output}"))

    timer = reactor.callLater(timeout, too_slow)
    try:
        code = await ended
    finally:
        if timer.active():
            timer.cancel()
    output = proc.output.decode(errors="replace")
    case.assertEqual(code, 0, output[-4000:])
    lines = [line for line in output.splitlines() if line.startswith("{")]
    case.assertTrue(lines, output[-4000:])
    return json.loads(lines[-1])


async def gone(case: unittest.TestCase, broker: Broker, sids: list[str]) -> None:
    """The broker forgets these connections soon after the client closed them."""
    await until(lambda: not any(sid in broker.connections for sid in sids),
                what="the broker to forget the closed connections")


def delivery(event: str, subject: str, data: list[Any]) -> dict[str, Any]:
    """A delivery as tests/node/interop.js reports it."""
    return {"event": event, "subject": subject, "data": data, "binary": True}


class PythonSocketIOTests(unittest.TestCase):
    timeout = 60

    async def test_python_socketio_client_speaks_conat(self) -> None:
        require_python_socketio()
        hub = start_hub(self, settings_for(self.mktemp()))
        broker = broker_of(hub)
        tag = "py1"
        seen: dict[str, Any] = {}

        async def inspect(sid: str) -> None:
            conn = broker.connections[sid]
            seen["info_acked"] = conn.info_acked
            seen["subs"] = {p: s.queue for p, s in conn.subs.items()}
            seen["user"] = conn.user.info if conn.user else None

        r = await run_script(self, [sys.executable, str(SIO_CLIENT), hub.root, f"hub_password={hub_password(hub)}",
                                    tag], on_hold=inspect)
        # info arrived, was acknowledged (the broker saw the ack) and says who we are
        self.assertEqual(r["info"], {"max_payload": MAX_PAYLOAD, "id": "0", "user": {"hub_id": "hub"}})
        self.assertTrue(r["got_info"])
        self.assertEqual(seen, {"info_acked": True, "subs": {f"s.{tag}.*": "q1"}, "user": {"hub_id": "hub"}})
        # subscribe, then again (the queue of the first one stays)
        self.assertEqual(r["subscribe"], {"status": "added"})
        self.assertEqual(r["subscribe_again"], {"status": "already-added"})
        # a binary publish with ack and headers, one without either: deliveries named by the pattern
        self.assertEqual(r["publish"], {"count": 1})
        self.assertTrue(r["delivered"])
        self.assertEqual(r["deliveries"], [
            {"event": f"s.{tag}.*", "raw_type": "bytes",
             "payload": {"subject": f"s.{tag}.x", "data": ["id1", 0, 1, 0, {"hex": b"\x00\xffbin".hex()}, {"h": "v"}]}},
            {"event": f"s.{tag}.*", "raw_type": "bytes",
             "payload": {"subject": f"s.{tag}.y", "data": ["id2", 0, 1, 1, {"hex": b'"no ack"'.hex()}]}},
        ])
        self.assertEqual(r["subscriptions"], [f"s.{tag}.*"])
        self.assertEqual(r["cluster"], [hub.root])
        # wait-for-interest: answered at once either way with timeout 0, later when someone subscribes
        self.assertIs(r["wfi_match"], True)
        self.assertIs(r["wfi_nobody"], False)
        self.assertIs(r["wfi_answered_early"], False)
        self.assertEqual(r["subscribe_later"], {"status": "added"})
        self.assertEqual(r["wfi_later"], [True])
        self.assertIsNone(r["unsubscribe"])
        self.assertEqual(r["subscriptions_after"], [f"s.{tag}.*"])
        await gone(self, broker, [r["sid"]])


class NodeClientTests(unittest.TestCase):
    timeout = 60

    async def test_hub_user_framing_routing_queues_requests_and_interest(self) -> None:
        node = require_node()
        hub = start_hub(self, settings_for(self.mktemp()))
        broker = broker_of(hub)
        tag = "n1"
        held: dict[str, Any] = {}

        async def inspect(what: str) -> None:
            sids = json.loads(what)
            held["sids"] = sids
            held["info_acked"] = {name: broker.connections[sid].info_acked for name, sid in sids.items()}
            held["subs"] = {name: sorted(broker.connections[sid].subs) for name, sid in sids.items()}

        params = {"url": hub.root, "cookie": f"hub_password={hub_password(hub)}", "tag": tag}
        r = await run_script(self, [node, str(INTEROP_JS), "hub", json.dumps(params)], on_hold=inspect)
        ids = r["ids"]
        inbox = r["inbox"]
        self.assertRegex(inbox, r"^_INBOX\.hub-hub\.[A-Za-z0-9]{10}$")

        # handshake, info with an ack id, the client's empty ack
        self.assertEqual(r["info"], {"max_payload": MAX_PAYLOAD, "id": "0", "user": {"hub_id": "hub"}})
        self.assertIs(r["info_had_ack"], True)
        self.assertRegex(r["first_frames_in"][0], OPEN_FRAME)
        self.assertEqual(r["first_frames_in"][1:], [
            '40{"sid":"' + r["sids"]["A"] + '"}',
            '420["info",{"max_payload":8000000,"id":"0","user":{"hub_id":"hub"}}]',
        ])
        self.assertEqual(r["first_frames_out"], ["40", "430[]"])
        # every connection's info ack reached the broker, including the binary ack (46…)
        self.assertEqual(held["info_acked"], {"A": True, "B": True, "C": True, "BA": True})
        self.assertEqual(r["binary_ack_frames_out"], ["40", '461-0[{"_placeholder":true,"num":0}]', "bin:010203"])
        self.assertEqual(r["binary_ack_subscriptions"], [])

        # subscribe
        self.assertEqual(r["sub_a"], {"status": "added"})
        self.assertEqual(r["sub_a_again"], {"status": "already-added"})
        self.assertEqual(r["sub_star"], {"status": "added"})
        self.assertEqual(r["sub_array"], [{"status": "added"}, {"status": "already-added"}])
        self.assertEqual(r["sub_invalid"], {"error": "Error: invalid subject"})
        self.assertEqual(r["sub_no_queue"], {"error": "Error: queue must be defined"})
        self.assertEqual(r["sub_inbox"], {"status": "added"})
        self.assertEqual(sorted(r["subscriptions_1"]), sorted([f"t.{tag}.a", f"t.{tag}.*", f"t.{tag}.arr1",
                                                               f"{inbox}.*"]))

        # publish: acks count deliveries; one event per matching pattern, named by it
        self.assertEqual(r["pub_headers"], {"count": 2})
        self.assertEqual(r["pub_arr1"], {"count": 2})
        self.assertEqual(r["pub_wildcard"], {"error": "Error: invalid subject"})
        self.assertEqual(r["pub_empty_subject"], {"error": "Error: invalid subject"})
        with_headers = [ids["headers"], 0, 1, 0, {"hex": "000102ff"}, {"h": "v", "n": 1}]
        arr1 = [ids["arr1"], 0, 1, 0, {"hex": b"hi".hex()}]
        self.assertEqual([d["data"][0] for d in r["deliveries"]],
                         [ids["headers"], ids["headers"], ids["noack"], ids["arr1"], ids["arr1"]])
        self.assertCountEqual(r["deliveries"], [
            delivery(f"t.{tag}.a", f"t.{tag}.a", with_headers),
            delivery(f"t.{tag}.*", f"t.{tag}.a", with_headers),
            delivery(f"t.{tag}.*", f"t.{tag}.b", [ids["noack"], 0, 1, 1, {"hex": b'{"x":1}'.hex()}]),
            delivery(f"t.{tag}.arr1", f"t.{tag}.arr1", arr1),
            delivery(f"t.{tag}.*", f"t.{tag}.arr1", arr1),
        ])
        # the frames as they travelled (spec §1.6, §3.1)
        self.assertEqual(r["delivery_frames"], [
            f'451-["t.{tag}.a",{{"subject":"t.{tag}.a","data":["{ids["headers"]}",0,1,0,'
            '{"_placeholder":true,"num":0},{"h":"v","n":1}]}]',
            "bin:000102ff"])
        self.assertRegex(r["publish_frames"][0], r'^451-\d+\["publish",\["t\.' + tag + r'\.a","' + ids["headers"]
                         + r'",0,1,0,\{"_placeholder":true,"num":0\},\{"h":"v","n":1\}\]\]$')
        self.assertEqual(r["publish_frames"][1], "bin:000102ff")
        self.assertEqual(r["publish_noack_frames"], [
            f'451-["publish",["t.{tag}.b","{ids["noack"]}",0,1,1,{{"_placeholder":true,"num":0}}]]',
            "bin:" + b'{"x":1}'.hex()])
        self.assertRegex(r["publish_ack_frame"], r'^43\d+\[\{"count":2\}\]$')

        # count: a ">" subscriber gets the message but is not counted; it is interest though
        self.assertIs(r["wfi_before_gt"], False)
        self.assertEqual(r["sub_gt"], {"status": "added"})
        self.assertIs(r["wfi_with_gt"], True)
        self.assertEqual(r["pub_only_gt"], {"count": 0})
        self.assertEqual(r["sub_c"], {"status": "added"})
        self.assertEqual(r["pub_gt_and_one"], {"count": 1})
        self.assertIsNone(r["unsub_gt"])
        self.assertIs(r["wfi_after_gt"], False)
        self.assertEqual(r["silent_deliveries"], [
            delivery(">", f"c.{tag}.x", [ids["silent1"], 0, 1, 0, {"hex": b"s".hex()}]),
            delivery(">", f"c.{tag}.x", [ids["silent2"], 0, 1, 0, {"hex": b"t".hex()}]),
        ])
        self.assertEqual(r["counted_deliveries"], [
            delivery(f"c.{tag}.*", f"c.{tag}.x", [ids["silent2"], 0, 1, 0, {"hex": b"t".hex()}])])

        # queue group "0": each message to exactly one of D1, D2; E (its own group) gets all
        q = r["queue"]
        self.assertEqual((r["sub_d1"], r["sub_d2"], r["sub_e"]), ({"status": "added"},) * 3)
        self.assertEqual(q["acks"], [{"count": 2}] * 40)
        self.assertEqual(sorted(q["d1"] + q["d2"]), sorted(q["ids"]))
        self.assertEqual(q["e"], q["ids"])
        self.assertTrue(q["d1"] and q["d2"], "40 messages all went to one member of the group")
        self.assertEqual(q["d1"], [i for i in q["ids"] if i in q["d1"]])  # in order

        # chunked messages to the queue group: whole at exactly one member each (the broker keeps
        # one member per message; upstream picks one per chunk and loses such messages)
        qc = r["queue_chunked"]
        self.assertEqual(qc["acks"], [{"count": 2}] * 30)
        self.assertEqual(qc["e"], qc["sent"])
        self.assertEqual(sorted(qc["d1"] + qc["d2"], key=lambda m: m["id"]), sorted(qc["sent"], key=lambda m: m["id"]))
        self.assertEqual(qc["chunk_counts"], {"d1": 3 * len(qc["d1"]), "d2": 3 * len(qc["d2"]), "e": 30})

        # unsubscribe
        self.assertIsNone(r["unsub_a"])
        self.assertEqual(r["pub_after_unsub"], {"count": 1})
        self.assertEqual(r["after_unsub_events"], [f"t.{tag}.*"])
        self.assertEqual(r["unsub_array"], [None, None])
        self.assertEqual(sorted(r["subscriptions_2"]), sorted([f"t.{tag}.*", f"{inbox}.*"]))

        # request/reply through the inbox, with CN-Reply
        self.assertEqual(r["sub_echo"], {"status": "added"})
        self.assertEqual(r["request_ack"], {"count": 1})
        self.assertTrue(r["reply_subject"].startswith(inbox + "."))
        self.assertEqual(len(r["replies"]), 1)
        reply = r["replies"][0]
        self.assertRegex(reply["data"][0], RANDOM_ID)
        self.assertEqual(reply, delivery(f"{inbox}.*", r["reply_subject"],
                                         [reply["data"][0], 0, 1, 0, {"hex": b"re:ping".hex()},
                                          {"replied": f"r.{tag}.echo"}]))
        self.assertEqual(r["echo_acks"], [{"count": 1}])
        self.assertEqual(r["request_nobody"], {"count": 0})

        # wait-for-interest
        self.assertIs(r["wfi_zero"], False)
        self.assertEqual(r["sub_w"], {"status": "added"})
        self.assertIs(r["wfi_pending"], True)
        self.assertEqual(r["wfi_order"], ["subscribing", "answered"])
        self.assertIs(r["wfi_now"], True)
        self.assertEqual(r["wfi_invalid"], {"error": "invalid subject"})

        self.assertEqual(r["cluster"], [hub.root])

        # what the broker held while the clients were connected, and that it let go
        self.assertEqual(held["subs"], {
            "A": sorted([f"t.{tag}.*", f"{inbox}.*"]), "B": [], "C": sorted([f"c.{tag}.*", f"r.{tag}.echo"]),
            "BA": []})
        self.assertIs(r["connected_after_hold"], False)
        await gone(self, broker, list(held["sids"].values()))

    async def test_account_is_refused_another_accounts_subjects(self) -> None:
        node = require_node()
        hub = start_hub(self, settings_for(self.mktemp()))
        pool = HTTPConnectionPool(reactor, persistent=False)
        accounts = []
        for email in ("admin@example.com", "me@example.com", "other@example.com"):
            c = ApiClient(hub.base, pool)
            resp = await c.sign_up(email)
            self.assertEqual(resp.code, 201, resp)
            accounts.append((c, resp.json["account_id"]))
        (me_client, me), (_, other) = accounts[1], accounts[2]
        tag = "p1"
        params = {"url": hub.root, "cookie": f"remember_me={me_client.cookies['remember_me']}", "me": me,
                  "other": other, "tag": tag}
        r = await run_script(self, [node, str(INTEROP_JS), "permission", json.dumps(params)])

        self.assertEqual(r["info"], {"max_payload": MAX_PAYLOAD, "id": "0", "user": {"account_id": me}})
        self.assertIs(r["info_had_ack"], True)
        user = json.dumps({"account_id": me}, separators=(",", ":"))

        def denied(step: str, verb: str, subject: str, kind: str) -> list[dict[str, Any]]:
            message = f"permission denied {verb} '{subject}' from {user}"
            return [{"permission": {"message": message, "subject": subject, "type": kind}},
                    {"ack": step, "value": {"error": f"Error: {message}", "code": 403}}]

        self.assertEqual(r["events"], [
            *denied("pub_other", "publishing to", f"account.{other}.x", "pub"),
            *denied("sub_other", "subscribing to", f"account.{other}.x", "sub"),
            {"ack": "pub_own", "value": {"count": 0}},
            {"ack": "sub_own", "value": {"status": "added"}},
            *denied("sub_hub_api", "subscribing to", f"hub.account.{me}.api", "sub"),
            {"ack": "sub_inbox", "value": {"status": "added"}},
            # upstream allows it; here only replies to requests delivered to this client may go
            # to another's inbox (tests/security/test_conat_inbox.py)
            *denied("pub_other_inbox", "publishing to", f"_INBOX.account-{other}.{tag}.x", "pub"),
            {"ack": "wfi_other", "value": {
                "error": f"permission denied waiting for interest in 'account.{other}.x' from {user}", "code": 403}},
            {"ack": "sub_too_many", "value": {
                "error": "Error: there is a limit of at most 500 subscriptions and you currently have 500 "
                         f"subscriptions -- subscription to 'account.{me}.{tag}.last' denied", "code": 429}},
        ])
        self.assertEqual((r["many_results"], r["many_added"]), (498, 498))

    async def test_refused_sign_in_gets_info_error_then_server_disconnect(self) -> None:
        node = require_node()
        hub = start_hub(self, settings_for(self.mktemp()))
        broker = broker_of(hub)
        before = (broker.total, len(broker.connections), dict(broker.per_user))
        r = await run_script(self, [node, str(INTEROP_JS), "authfail",
                                    json.dumps({"url": hub.root, "cookie": "hub_password=wrong"})])
        errors = {
            "bad_password": "Error: invalid hub password",
            "no_cookie": "Error: no auth cookie set; set one of 'hub_password', 'remember_me', api_key, "
                         "'project_secret' or 'project_id'",
        }
        for name, error in errors.items():
            got = r[name]
            info = {"max_payload": MAX_PAYLOAD, "id": "0", "user": {"error": error}}
            self.assertEqual(got["info"], info, name)
            self.assertIs(got["info_had_ack"], False, name)
            self.assertEqual(got["reason"], "io server disconnect", name)
            self.assertEqual(got["reconnect_attempts"], 0, name)
            self.assertIs(got["active"], False, name)
            self.assertLess(got["ms"], 5000, name)  # at once, not after the 7.5 s info-ack timeout
            self.assertEqual(len(got["frames_in"]), 3, got["frames_in"])
            self.assertRegex(got["frames_in"][0], r'^40\{"sid":"[A-Za-z0-9_-]{20}"\}$')
            self.assertEqual(got["frames_in"][1:], ["42" + json.dumps(["info", info], separators=(",", ":")), "41"])
        # nothing lingers on the broker (once it has seen the sockets close)
        await until(lambda: (broker.total, len(broker.connections), dict(broker.per_user)) == before,
                    what="the broker to forget the refused connections")

    async def test_under_a_base_path(self) -> None:
        node = require_node()
        hub = start_hub(self, settings_for(self.mktemp(), env={"BASE_PATH": "/my/hub"}))
        pw = hub_password(hub)
        tag = "b1"
        params = {"url": hub.root, "basePath": "/my/hub", "tag": tag,
                  "cookies": {"prefixed": f"%2Fmy%2Fhubhub_password={pw}", "bare": f"hub_password={pw}"}}
        r = await run_script(self, [node, str(INTEROP_JS), "basepath", json.dumps(params)])
        self.assertEqual(r["prefixed"], {
            "info": {"max_payload": MAX_PAYLOAD, "id": "0", "user": {"hub_id": "hub"}},
            "subscribe": {"status": "added"},
            "publish": {"count": 1},
            "deliveries": [delivery(f"b.{tag}.*", f"b.{tag}.x", ["id1", 0, 1, 0, {"hex": b"base".hex()}])],
        })
        # the unprefixed name is not a credential under a base path
        self.assertEqual(r["bare"]["reason"], "io server disconnect")
        self.assertEqual(set(r["bare"]["info"]["user"]), {"error"})
        self.assertTrue(r["bare"]["info"]["user"]["error"].startswith("Error: must set one of the following cookies: "),
                        r["bare"])
        self.assertIn("'%2Fmy%2Fhubhub_password'", r["bare"]["info"]["user"]["error"])
        # the Python client finds <base>/conat/ from the address too
        client = connect(reactor, hub.base, cookies={"%2Fmy%2Fhubhub_password": pw})
        self.addCleanup(client.close)
        info = await client.signed_in()
        self.assertEqual(info, {"max_payload": MAX_PAYLOAD, "id": "0", "user": {"hub_id": "hub"}})


class CrossClientTests(unittest.TestCase):
    timeout = 60

    async def test_node_and_the_python_client_exchange_messages_requests_and_big_messages(self) -> None:
        node = require_node()
        hub = start_hub(self, settings_for(self.mktemp()))
        pw = hub_password(hub)
        tag = "x1"
        client: Client = connect(reactor, hub.root, cookies={"hub_password": pw}, inbox_prefix="_INBOX.hub-hub")
        self.addCleanup(client.close)
        await client.signed_in()
        to_py = await client.subscribe(f"x.{tag}.to-py")
        await client.service(f"x.{tag}.py-echo", lambda name, args, msg: [name, *args] if name != "upper"
                             else str(args[0]).upper())
        big_size = 9_000_000
        params = {"url": hub.root, "cookie": f"hub_password={pw}", "tag": tag, "big_size": big_size}
        proc = defer.ensureDeferred(run_script(self, [node, str(INTEROP_JS), "cross", json.dumps(params)]))

        # Python -> node: a small msgpack message and a chunked 9 MB one; requests node answers
        small = {"n": 1, "s": "hé"}
        small_raw = msgpack.packb(small, use_bin_type=True)
        self.assertEqual(await client.publish(f"x.{tag}.to-node", small, wait_for_interest=True, timeout=20), 1)
        big = random.Random(7).randbytes(big_size)
        self.assertEqual(await client.publish(f"x.{tag}.to-node", raw=big, headers={"big": "py"}, timeout=20), 1)
        reply = await client.request(f"x.{tag}.node-echo", {"ping": 1}, encoding=JSON, timeout=10)
        self.assertEqual((reply.subject.rsplit(".", 1)[0], reply.encoding, reply.headers, reply.data),
                         (client.inbox, JSON, {"echo": "node"}, {"ping": 1}))
        reply = await client.request(f"x.{tag}.node-echo", "ping", timeout=10)
        self.assertEqual((reply.encoding, reply.headers, reply.data), (MSGPACK, {"echo": "node"}, "ping"))
        client.publish_sync(f"x.{tag}.done", None)

        # node -> Python: JSON with headers, msgpack, a chunked 9 MB message
        got = [await to_py.next(timeout=30) for _ in range(3)]
        r = await proc
        self.assertEqual([(m.subject, m.encoding, m.headers) for m in got], [
            (f"x.{tag}.to-py", JSON, {"k": "v"}), (f"x.{tag}.to-py", MSGPACK, None),
            (f"x.{tag}.to-py", MSGPACK, {"big": "node"})])
        self.assertEqual((got[0].raw, got[0].data), (b'{"from":"node","n":1}', {"from": "node", "n": 1}))
        self.assertEqual((got[1].raw, got[1].data), (b"\xa2hi", "hi"))
        self.assertEqual((len(got[2].raw), hashlib.sha256(got[2].raw).hexdigest()), (big_size, r["big_sha256"]))
        self.assertEqual(r["to_py_json"], [{"count": 1}])
        self.assertEqual(r["to_py_msgpack"], [{"count": 1}])
        self.assertEqual(r["to_py_big"], [{"count": 1}, {"count": 1}])

        # what node received, and how: 2 chunks of the big one, headers only on the last
        self.assertEqual(r["received"], [
            {"subject": f"x.{tag}.to-node", "encoding": 0, "headers": None, "length": len(small_raw),
             "sha256": hashlib.sha256(small_raw).hexdigest(), "hex": small_raw.hex(), "chunks": 1},
            {"subject": f"x.{tag}.to-node", "encoding": 0, "headers": {"big": "py"}, "length": big_size,
             "sha256": hashlib.sha256(big).hexdigest(), "hex": None, "chunks": 2},
        ])
        self.assertEqual(r["chunks"], [
            {"seq": 0, "done": 1, "length": len(small_raw), "headers": None},
            {"seq": 0, "done": 0, "length": CHUNK, "headers": None},
            {"seq": 1, "done": 1, "length": big_size - CHUNK, "headers": {"big": "py"}},
        ])
        # the requests node answered carried the Python client's reply subject
        self.assertEqual(len(r["echoed"]), 2)
        reply_pattern = "^" + re.escape(client.inbox or "?") + r"\.[0-9a-f]{32}$"  # 128 random bits
        for echoed, (raw, encoding) in zip(r["echoed"], [(b'{"ping":1}', JSON),
                                                         (msgpack.packb("ping"), MSGPACK)], strict=True):
            self.assertEqual(list(echoed["headers"]), ["CN-Reply"])
            self.assertRegex(echoed["headers"]["CN-Reply"], reply_pattern)
            self.assertEqual({k: v for k, v in echoed.items() if k != "headers"},
                             {"subject": f"x.{tag}.node-echo", "encoding": encoding, "raw": raw.hex()})

        # node's request to the Python service (JSON [name, args]), answered on node's inbox
        self.assertEqual(r["request_ack"], [{"count": 1}])
        self.assertEqual(r["reply"], {"subject": r["reply_subject"], "encoding": 1, "raw": '"HELLO"', "headers": None})

    async def test_headers_of_any_json_value_travel_both_ways(self) -> None:
        """Upstream forwards any JSON value as headers (``"x"``, ``7``, ``[1,2]``, ``true``)."""
        node = require_node()
        hub = start_hub(self, settings_for(self.mktemp()))
        pw = hub_password(hub)
        client: Client = connect(reactor, hub.root, cookies={"hub_password": pw}, inbox_prefix="_INBOX.hub-hub")
        self.addCleanup(client.close)
        await client.signed_in()
        seen: list[Any] = []

        def echo(msg: Message) -> None:
            seen.append(msg.headers)
            client.publish_sync("hdr.in", raw=msg.raw, encoding=msg.encoding, headers=msg.headers)

        def answer(msg: Message) -> None:
            msg.respond_sync("bar", headers="x", encoding=JSON)  # fire and forget: no ack to see an error in

        await client.subscribe("hdr.out", callback=echo)
        await client.subscribe("hdr.svc", callback=answer)
        values: list[Any] = ["x", 7, [1, 2], True, {"k": "v"}]
        r = await run_script(self, [node, str(INTEROP_JS), "headers",
                                    json.dumps({"url": hub.root, "cookie": f"hub_password={pw}", "values": values})])
        self.assertEqual(r["acks"], [{"count": 1}] * len(values))
        self.assertEqual(seen, values)  # what the Python client received
        self.assertEqual(r["echoed"], values)  # what node received back
        self.assertEqual(r["request_count"], {"count": 1})
        self.assertEqual(r["reply"], {"data": '"bar"', "headers": "x"})
