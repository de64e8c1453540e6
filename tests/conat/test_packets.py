"""The Socket.IO v5 packet codec: exact frames, binary placeholders, malformed input."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cocalc_hub.conat.transport import packets
from cocalc_hub.conat.transport.packets import (
    ACK,
    BINARY_ACK,
    BINARY_EVENT,
    CONNECT,
    CONNECT_ERROR,
    DISCONNECT,
    EVENT,
    MAX_ATTACHMENTS,
    Packet,
    ProtocolError,
    decode,
    deconstruct,
    encode,
    finish_binary,
    reconstruct,
)

UUID = "0d1e7f52-6a5e-4c5b-9c3a-2f1d8e4b7a60"
PH0 = '{"_placeholder":true,"num":0}'
PH1 = '{"_placeholder":true,"num":1}'
# msgpack of {name:"system.getCustomize", args:[["siteName"]]} (spec §1.6)
API_CALL = bytes.fromhex("82 a4 6e 61 6d 65 b3 73 79 73 74 65 6d 2e 67 65 74 43 75 73 74 6f 6d 69 7a 65"
                         " a4 61 72 67 73 91 91 a8 73 69 74 65 4e 61 6d 65")
REPLY = f"_INBOX.account-{UUID}.k3J9dQ2mXa.Wc5vN1rT8e"


def text_of(frames: list[Any]) -> str:
    text = frames[0]
    assert isinstance(text, str)
    return text


def receive(frames: list[Any]) -> Packet:
    """What a receiver makes of ``encode``'s output: decode the text, attach, substitute."""
    text, *binaries = frames
    assert isinstance(text, str) and text[0] == "4"
    packet = decode(text[1:])
    if packet.type >= BINARY_EVENT:
        packet.attachments.extend(binaries)
        assert len(packet.attachments) == packet.expected
        finish_binary(packet)
    return packet


class RoundTripTests(SynchronousTestCase):
    # (type given to encode, data, nsp, ack id, exact frames, type after decode, attachments announced)
    CASES: list[tuple[int, Any, str, int | None, list[Any], int, int]] = [
        (CONNECT, None, "/", None, ["40"], CONNECT, 0),
        (CONNECT, {"sid": "FXadSgh7hXWWRTWmAAAA"}, "/", None, ['40{"sid":"FXadSgh7hXWWRTWmAAAA"}'], CONNECT, 0),
        (CONNECT, None, "/admin", None, ["40/admin,"], CONNECT, 0),
        (CONNECT, {"token": "t"}, "/admin", None, ['40/admin,{"token":"t"}'], CONNECT, 0),
        (DISCONNECT, None, "/", None, ["41"], DISCONNECT, 0),
        (DISCONNECT, None, "/admin", None, ["41/admin,"], DISCONNECT, 0),
        (EVENT, ["ev", 1, "two"], "/", None, ['42["ev",1,"two"]'], EVENT, 0),
        (EVENT, ["ev"], "/", 7, ['427["ev"]'], EVENT, 0),
        (EVENT, ["ev", None], "/admin", None, ['42/admin,["ev",null]'], EVENT, 0),
        (EVENT, ["ev", {"a": 1}], "/admin", 12, ['42/admin,12["ev",{"a":1}]'], EVENT, 0),
        (EVENT, [3, "numeric name"], "/", None, ['42[3,"numeric name"]'], EVENT, 0),
        (ACK, [], "/", 0, ["430[]"], ACK, 0),
        (ACK, [1, "a"], "/", None, ['43[1,"a"]'], ACK, 0),
        (ACK, [None], "/admin", 3, ["43/admin,3[null]"], ACK, 0),
        (CONNECT_ERROR, {"message": "m", "data": {"x": 1}}, "/", None, ['44{"message":"m","data":{"x":1}}'],
         CONNECT_ERROR, 0),
        (CONNECT_ERROR, "oops", "/", None, ['44"oops"'], CONNECT_ERROR, 0),
        (CONNECT_ERROR, {"message": "Invalid namespace"}, "/admin", None,
         ['44/admin,{"message":"Invalid namespace"}'], CONNECT_ERROR, 0),
        (EVENT, ["ev", b"\x00\x01"], "/", None, ['451-["ev",' + PH0 + "]", b"\x00\x01"], BINARY_EVENT, 1),
        (EVENT, ["ev", b"x"], "/admin", 9, ['451-/admin,9["ev",' + PH0 + "]", b"x"], BINARY_EVENT, 1),
        (ACK, [b"a", b"b"], "/", 5, ["462-5[" + PH0 + "," + PH1 + "]", b"a", b"b"], BINARY_ACK, 2),
        (ACK, [b""], "/admin", None, ["461-/admin,[" + PH0 + "]", b""], BINARY_ACK, 1),
    ]

    def test_every_type_encodes_to_the_exact_frames(self) -> None:
        for ptype, data, nsp, ack_id, frames, _, _ in self.CASES:
            self.assertEqual(encode(ptype, data, nsp=nsp, ack_id=ack_id), frames)

    def test_every_type_decodes_with_its_header_fields(self) -> None:
        for _, data, nsp, ack_id, frames, wire_type, count in self.CASES:
            packet = decode(frames[0][1:])
            self.assertEqual((packet.type, packet.nsp, packet.id, packet.expected, packet.attachments),
                             (wire_type, nsp, ack_id, count, []), frames[0])
            if not count:
                self.assertEqual(packet.data, data)

    def test_every_type_survives_encode_then_decode(self) -> None:
        for ptype, data, nsp, ack_id, frames, _, _ in self.CASES:
            packet = receive(encode(ptype, data, nsp=nsp, ack_id=ack_id))
            self.assertEqual((packet.type, packet.nsp, packet.id, packet.data), (ptype, nsp, ack_id, data), frames)

    def test_binary_packet_with_zero_attachments_is_announced_as_zero(self) -> None:
        packet = decode('50-["ev",1]')
        self.assertEqual((packet.type, packet.expected), (BINARY_EVENT, 0))
        self.assertEqual((finish_binary(packet).type, packet.data), (EVENT, ["ev", 1]))

    def test_ten_attachments_is_the_limit(self) -> None:
        self.assertEqual(MAX_ATTACHMENTS, 10)
        items = [bytes([i]) for i in range(10)]
        frames = encode(EVENT, ["ev", *items])
        self.assertTrue(text_of(frames).startswith('4510-["ev",' + PH0 + "," + PH1 + ","))
        self.assertEqual(frames[1:], items)
        self.assertEqual(receive(frames).data, ["ev", *items])
        with self.assertRaises(ProtocolError):
            decode('511-["ev"]')


class BinaryTests(SynchronousTestCase):
    def test_placeholders_anywhere_numbered_depth_first(self) -> None:
        data = ["ev", b"0", {"k": [b"1", {"deep": b"2"}], "l": b"3"}, [[b"4"]], "s", bytearray(b"5"),
                memoryview(b"6"), (b"7",)]
        frames = encode(EVENT, data)
        self.assertEqual(frames[0],
                         '458-["ev",{"_placeholder":true,"num":0},{"k":[{"_placeholder":true,"num":1},'
                         '{"deep":{"_placeholder":true,"num":2}}],"l":{"_placeholder":true,"num":3}},'
                         '[[{"_placeholder":true,"num":4}]],"s",{"_placeholder":true,"num":5},'
                         '{"_placeholder":true,"num":6},[{"_placeholder":true,"num":7}]]')
        self.assertEqual(frames[1:], [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"])
        self.assertTrue(all(type(b) is bytes for b in frames[1:]))
        self.assertEqual(receive(frames).data,
                         ["ev", b"0", {"k": [b"1", {"deep": b"2"}], "l": b"3"}, [[b"4"]], "s", b"5", b"6", [b"7"]])

    def test_attachments_are_substituted_by_num_not_by_position(self) -> None:
        packet = decode('52-["x",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]')
        packet.attachments.extend([b"first", b"second"])
        self.assertEqual(finish_binary(packet).data, ["x", b"second", b"first"])

    def test_deconstruct_and_reconstruct(self) -> None:
        buffers: list[bytes] = []
        value = deconstruct({"a": [b"x", (1, b"y")], "b": "text"}, buffers)
        self.assertEqual(value, {"a": [{"_placeholder": True, "num": 0}, [1, {"_placeholder": True, "num": 1}]],
                                 "b": "text"})
        self.assertEqual(list(value["a"][0]), ["_placeholder", "num"])
        self.assertEqual(buffers, [b"x", b"y"])
        self.assertEqual(reconstruct(value, buffers), {"a": [b"x", [1, b"y"]], "b": "text"})
        self.assertEqual(reconstruct({"_placeholder": True, "num": 0}, [b"top"]), b"top")
        untouched = [{"_placeholder": True, "num": 0}]
        self.assertIs(reconstruct(untouched, []), untouched)
        self.assertEqual(untouched, [{"_placeholder": True, "num": 0}])

    def test_placeholder_must_point_at_an_attachment(self) -> None:
        for num in ("1", "-1", '"0"', "true", "null", "0.5"):
            packet = decode('51-["x",{"_placeholder":true,"num":' + num + "}]")
            packet.attachments.append(b"only")
            with self.assertRaises(ProtocolError, msg=num):
                finish_binary(packet)

    def test_binary_ack_header(self) -> None:
        packet = decode("61-5[" + PH0 + "]")
        self.assertEqual((packet.type, packet.id, packet.expected), (BINARY_ACK, 5, 1))
        packet.attachments.append(b"\xff")
        finish_binary(packet)
        self.assertEqual((packet.type, packet.id, packet.data), (ACK, 5, [b"\xff"]))
        self.assertEqual(encode(ACK, [b"\xff"], ack_id=5), ["461-5[" + PH0 + "]", b"\xff"])


class SpecFrameTests(SynchronousTestCase):
    """The captured frames of spec §1.6."""

    def test_client_publish_with_ack_and_headers(self) -> None:
        text = (f'451-1["publish",["hub.account.{UUID}.api","u8Fh2Kq0Lz",0,1,0,{PH0},'
                f'{{"CN-Reply":"{REPLY}"}}]]')
        self.assertEqual(len(API_CALL), 42)
        packet = decode(text[1:])
        self.assertEqual((packet.type, packet.nsp, packet.id, packet.expected), (BINARY_EVENT, "/", 1, 1))
        packet.attachments.append(API_CALL)
        finish_binary(packet)
        args = ["publish", [f"hub.account.{UUID}.api", "u8Fh2Kq0Lz", 0, 1, 0, API_CALL, {"CN-Reply": REPLY}]]
        self.assertEqual((packet.type, packet.data), (EVENT, args))
        self.assertEqual(encode(EVENT, args, ack_id=1), [text, API_CALL])
        self.assertEqual(encode(ACK, [{"count": 1}], ack_id=1), ['431[{"count":1}]'])

    def test_delivery_to_the_hub(self) -> None:
        payload = {"subject": f"hub.account.{UUID}.api",
                   "data": ["u8Fh2Kq0Lz", 0, 1, 0, API_CALL, {"CN-Reply": REPLY}]}
        self.assertEqual(encode(EVENT, ["hub.*.*.api", payload]),
                         [f'451-["hub.*.*.api",{{"subject":"hub.account.{UUID}.api","data":["u8Fh2Kq0Lz",0,1,0,'
                          f'{PH0},{{"CN-Reply":"{REPLY}"}}]}}]', API_CALL])

    def test_fire_and_forget_publish(self) -> None:
        text = '451-["publish",["a.b","id2",0,1,0,{"_placeholder":true,"num":0}]]'
        packet = decode(text[1:])
        self.assertEqual((packet.type, packet.id, packet.expected), (BINARY_EVENT, None, 1))
        packet.attachments.append(bytes.fromhex("a26869"))
        self.assertEqual(finish_binary(packet).data, ["publish", ["a.b", "id2", 0, 1, 0, b"\xa2hi"]])
        self.assertEqual(encode(EVENT, packet.data), [text, b"\xa2hi"])

    def test_handshake_info_subscribe_cluster_frames(self) -> None:
        connect = decode("0")
        self.assertEqual((connect.type, connect.nsp, connect.data, connect.id), (CONNECT, "/", None, None))
        stats = decode('2["stats",{"recv0":{"messages":0,"bytes":0}}]')
        self.assertEqual((stats.type, stats.id, stats.data),
                         (EVENT, None, ["stats", {"recv0": {"messages": 0, "bytes": 0}}]))
        info = {"max_payload": 8000000, "id": "0", "user": {"account_id": UUID}}
        self.assertEqual(encode(EVENT, ["info", info], ack_id=0),
                         [f'420["info",{{"max_payload":8000000,"id":"0","user":{{"account_id":"{UUID}"}}}}]'])
        ack = decode("30[]")
        self.assertEqual((ack.type, ack.id, ack.data), (ACK, 0, []))
        sub = decode('20["subscribe",{"subject":"_INBOX.x.*","queue":"Zp0Qm7LwB1"}]')
        self.assertEqual((sub.id, sub.data), (0, ["subscribe", {"subject": "_INBOX.x.*", "queue": "Zp0Qm7LwB1"}]))
        self.assertEqual(encode(ACK, [{"status": "added"}], ack_id=0), ['430[{"status":"added"}]'])
        cluster = decode('22["cluster"]')
        self.assertEqual((cluster.type, cluster.id, cluster.data), (EVENT, 2, ["cluster"]))
        self.assertEqual(encode(ACK, [["http://localhost:3000"]], ack_id=2), ['432[["http://localhost:3000"]]'])

    def test_auth_failure_frames(self) -> None:
        user = {"error": "Error: no auth cookie set", "code": 403}
        self.assertEqual(encode(EVENT, ["info", {"max_payload": 8000000, "id": "0", "user": user}]),
                         ['42["info",{"max_payload":8000000,"id":"0","user":{"error":"Error: no auth cookie set",'
                          '"code":403}}]'])
        self.assertEqual(encode(DISCONNECT), ["41"])


class JsonTests(SynchronousTestCase):
    def test_compact_and_key_order_kept(self) -> None:
        self.assertEqual(encode(EVENT, ["x", {"b": 1, "a": [1, 2.5, True, None]}, "a b"]),
                         ['42["x",{"b":1,"a":[1,2.5,true,null]},"a b"]'])

    def test_non_ascii_is_escaped(self) -> None:
        text = text_of(encode(EVENT, ["x", "é…😀\x7f\n"]))
        self.assertEqual(text, '42["x","\\u00e9\\u2026\\ud83d\\ude00\\u007f\\n"]')
        self.assertEqual(decode(text[1:]).data, ["x", "é…😀\x7f\n"])

    def test_lone_surrogates_round_trip_as_escapes(self) -> None:
        value = "a\ud800b\udfffc"
        text = text_of(encode(EVENT, ["x", {value: value}]))
        self.assertEqual(text, '42["x",{"a\\ud800b\\udfffc":"a\\ud800b\\udfffc"}]')
        self.assertTrue(text.isascii())
        text.encode("utf-8")  # a valid text frame
        self.assertEqual(decode(text[1:]).data, ["x", {value: value}])
        self.assertEqual(decode('2["x","\\udc00"]').data, ["x", "\udc00"])


class MalformedTests(SynchronousTestCase):
    def assertRejected(self, text: str) -> None:
        with self.assertRaises(ProtocolError, msg=repr(text)):
            decode(text)

    def test_bad_json(self) -> None:
        for text in ('2["x"', "2{", '2["x",]', "2['x']", '2["x"]]', "0{,}", '2["x"] junk', "3[1 2]"):
            self.assertRejected(text)

    def test_non_json_numbers(self) -> None:
        for text in ('2["x",NaN]', '2["x",Infinity]', '2["x",-Infinity]', '2["x",1e400]', '3[-1e999]'):
            self.assertRejected(text)
        self.assertEqual(decode('2["x",1e308,-0.5]').data, ["x", 1e308, -0.5])

    def test_unknown_type_and_empty(self) -> None:
        for text in ("", "7", '7["x"]', '9["x"]', 'a["x"]', ' 2["x"]', '["x"]', "-1"):
            self.assertRejected(text)

    def test_non_ascii_digits(self) -> None:
        for text in ("٣", '2٣["x"]', '5٣-["x"]', '2["x",٣]', '２["x"]', '5１-["x"]', '2["x",1٣]'):
            self.assertRejected(text)

    def test_attachment_count_only_on_binary_types(self) -> None:
        for text in ('21-["x"]', "31-[]", "01-{}", "11-", '41-{"message":"m"}'):
            self.assertRejected(text)
        for text in ('5["x"]', '5-["x"]', "6[]", "61[]", "6/a,[]"):
            self.assertRejected(text)
        for text in ('511-["x"]', '599-["x"]', '5100-["x"]'):
            self.assertRejected(text)
        self.assertEqual(decode('510-["x"]').expected, 10)

    def test_reserved_event_names(self) -> None:
        for name in ("connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"):
            self.assertRejected(f'2["{name}"]')
            self.assertRejected(f'21["{name}",1]')
            self.assertRejected(f'51-["{name}",{PH0}]')
        self.assertEqual(decode('2["Connect"]').data, ["Connect"])
        self.assertEqual(decode('2["newlistener"]').data, ["newlistener"])

    def test_event_payload_must_be_a_non_empty_array(self) -> None:
        for text in ("2", "2[]", '2{"a":1}', '2"x"', "21", "2null", "50-[]", "50-", '50-{"a":1}'):
            self.assertRejected(text)

    def test_event_name_must_be_string_or_number(self) -> None:
        for text in ("2[null]", "2[true]", "2[false]", '2[["x"]]', '2[{"a":1}]', "51-[" + PH0 + "]"):
            self.assertRejected(text)
        self.assertEqual(decode('2[1.5,"a"]').data, [1.5, "a"])
        self.assertEqual(decode("2[0]").data, [0])

    def test_disconnect_takes_no_payload(self) -> None:
        for text in ("1{}", '1"x"', "1[]", "1null", "11{}", "1/admin,{}", "1 "):
            self.assertRejected(text)
        self.assertEqual(decode("1/admin,").nsp, "/admin")

    def test_ack_payload_must_be_an_array(self) -> None:
        for text in ("3", "30", '3{"a":1}', '30"x"', "3null", "31 5", "60-{}", "61-1" + PH0):
            self.assertRejected(text)

    def test_connect_payload_must_be_an_object(self) -> None:
        for text in ("0[]", '0"x"', "0null", "0/admin,[1]", "0true"):
            self.assertRejected(text)
        self.assertEqual(decode('0{"token":"t"}').data, {"token": "t"})

    def test_connect_error_payload_is_string_or_object(self) -> None:
        for text in ("4", "4[]", "4null", "41", "4/admin,"):
            self.assertRejected(text)

    def test_huge_nesting_is_a_protocol_error(self) -> None:
        for depth in (10_000, 200_000):
            self.assertRejected('2["x",' + "[" * depth + "]" * depth + "]")
            self.assertRejected('2["x",' + '{"a":' * depth + "1" + "}" * depth + "]")

    def test_deep_tree_in_finish_binary_is_a_protocol_error(self) -> None:
        # Deeper than Python's recursion limit: the JSON decoder's own limit may differ from it.
        tree: Any = {"_placeholder": True, "num": 0}
        for _ in range(5000):
            tree = [tree]
        packet = Packet(BINARY_EVENT, data=["x", tree], expected=1, attachments=[b"z"])
        with self.assertRaises(ProtocolError):
            finish_binary(packet)
        shallow = decode('51-["x",' + "[" * 50 + PH0 + "]" * 50 + "]")
        shallow.attachments.append(b"z")
        inner = finish_binary(shallow).data[1]
        for _ in range(50):
            inner = inner[0]
        self.assertEqual(inner, b"z")


# --- property: any JSON-ish tree with bytes leaves survives the codec --------------------------

# Lone surrogates included (a JSON escape can carry them); an adjacent high+low pair is one
# character to JSON (and to JavaScript), so decoding rightly joins it: those are left out.
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_text = (st.lists(st.characters(codec=None) | st.characters(categories=["Cs"]), max_size=8).map("".join)
         .filter(lambda s: _PAIR.search(s) is None))
_keys = _text.filter(lambda k: k != "_placeholder")
_leaves = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | _text | st.binary(max_size=6))
_trees = st.recursive(_leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_keys, kids, max_size=4),
                      max_leaves=12)


def _count_bytes(value: Any) -> int:
    if isinstance(value, bytes):
        return 1
    if isinstance(value, list):
        return sum(_count_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_count_bytes(v) for v in value.values())
    return 0


def _typed(value: Any) -> Any:
    """A comparable form that tells True from 1 and 1.0 from 1."""
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    return (type(value).__name__, repr(value))


class PublishFastPathTests(SynchronousTestCase):
    """A conat publish (one attachment at ``[1][5]``) skips the general walk: same result."""

    def test_the_chunk_gets_its_bytes(self) -> None:
        packet = decode('51-7["publish",["a.b","id",0,1,0,' + PH0 + ',{"CN-Reply":"' + REPLY + '"}]]')
        packet.attachments.append(API_CALL)
        self.assertEqual(finish_binary(packet).data,
                         ["publish", ["a.b", "id", 0, 1, 0, API_CALL, {"CN-Reply": REPLY}]])

    def test_a_placeholder_earlier_in_the_chunk_is_the_one_filled_as_before(self) -> None:
        # the general walk fills the first placeholder it meets, depth first
        packet = decode('51-["publish",["a.b",' + PH0 + ',0,1,0,' + PH0 + ']]')
        packet.attachments.append(b"x")
        self.assertEqual(finish_binary(packet).data, ["publish", ["a.b", b"x", 0, 1, 0, json.loads(PH0)]])

    def test_a_bad_placeholder_in_the_chunk_is_refused(self) -> None:
        packet = decode('51-["publish",["a.b","id",0,1,0,{"_placeholder":true,"num":1}]]')
        packet.attachments.append(b"x")
        with self.assertRaises(ProtocolError):
            finish_binary(packet)

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.lists(_trees, min_size=6, max_size=8))
    def test_same_as_the_general_walk(self, chunk: list[Any]) -> None:
        chunk[5] = b"raw"
        buffers: list[bytes] = []
        value = deconstruct(["publish", chunk], buffers)
        if len(buffers) != 1:
            return
        expected = packets._fill  # the general walk, on a copy
        general = json.loads(json.dumps(value))
        expected(general, list(buffers), [1])
        self.assertEqual(_typed(reconstruct(json.loads(json.dumps(value)), buffers)), _typed(general))


class HeadersJsonTests(SynchronousTestCase):
    def test_same_text_as_dumps(self) -> None:
        for headers in ({"CN-Reply": REPLY}, {"CN-Reply": 'q"\\\u00e9\ud800\n'}, {"CN-Reply": 7},
                        {"CN-Reply": REPLY, "x": 1}, {"a": "b"}, {}, "x", 7, [1, 2], True, None):
            self.assertEqual(packets.headers_json(headers), packets.dumps(headers), headers)
        self.assertTrue(packets.headers_json({"CN-Reply": "\u00e9"}).isascii())

    def test_is_flat(self) -> None:
        self.assertTrue(packets.is_flat({"count": 1, "a": None, "b": "s", "c": 1.5, "d": True}))
        self.assertTrue(packets.is_flat({}))
        for value in ({"a": b"x"}, {"a": [1]}, {"a": {}}, {1: 2}):
            self.assertFalse(packets.is_flat(value), value)


class AckEncodingTests(SynchronousTestCase):
    """An Ack writes the same packet whether it takes the flat-dict shortcut or not."""

    def sent(self, args: tuple[Any, ...], nsp: str = "/", confirm: bool = False) -> list[Any]:
        from cocalc_hub.conat.transport.socket import Ack, Handshake, NamespaceSocket

        out: list[Any] = []

        class Sender:
            def send_packet(self, text: str, binaries: list[bytes], flow: object = None, order: int = 0) -> None:
                out.append(([text, *binaries], order))

        ack = Ack(NamespaceSocket("sid", Sender(), Handshake(), nsp=nsp), 12)  # type: ignore[arg-type]
        (ack.confirm if confirm else ack)(*args)
        ack(*args)  # only the first call is sent
        return out

    def test_same_packets(self) -> None:
        from cocalc_hub.conat.transport.barriers import CONFIRM, PLAIN

        for args in (({"count": 1},), ({"status": "added"},), ({"error": "Error: é", "code": 403},), ({},),
                     ({"a": b"x"},), ({"a": [1]},), (None,), (), ([None, None],), ({"count": 1}, 2)):
            for nsp in ("/", "/custom"):
                self.assertEqual(self.sent(args, nsp), [(encode(ACK, list(args), nsp=nsp, ack_id=12), PLAIN)],
                                 (args, nsp))
                self.assertEqual(self.sent(args, nsp, confirm=True),
                                 [(encode(ACK, list(args), nsp=nsp, ack_id=12), CONFIRM)], (args, nsp))


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, database=None)
    @given(st.text(min_size=1, max_size=10), st.lists(_trees, max_size=4), st.none() | st.integers(0, 10**15 - 1))
    def test_round_trip(self, name: str, args: list[Any], ack_id: int | None) -> None:
        if name in packets.RESERVED_EVENTS or _count_bytes(args) > MAX_ATTACHMENTS:
            return
        data = [name, *args]
        frames = encode(EVENT, data, ack_id=ack_id)
        text = text_of(frames)
        self.assertTrue(text.isascii())
        self.assertEqual(len(frames) - 1, _count_bytes(args))
        packet = receive(frames)
        self.assertEqual((packet.type, packet.id, packet.nsp), (EVENT, ack_id, "/"))
        self.assertEqual(_typed(packet.data), _typed(data))

    @settings(max_examples=100, deadline=None, database=None)
    @given(st.lists(_trees, max_size=4), st.integers(0, 999))
    def test_ack_round_trip(self, args: list[Any], ack_id: int) -> None:
        if _count_bytes(args) > MAX_ATTACHMENTS:
            return
        packet = receive(encode(ACK, args, ack_id=ack_id))
        self.assertEqual((packet.type, packet.id), (ACK, ack_id))
        self.assertEqual(_typed(packet.data), _typed(args))
