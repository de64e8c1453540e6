"""cocalc_hub/conat/transport/session.py: what the hub's server and its Python client share."""

from __future__ import annotations

import json

from twisted.trial import unittest

from cocalc_hub.conat.transport import packets
from cocalc_hub.conat.transport.client import EngineClientProtocol
from cocalc_hub.conat.transport.packets import Packet, ProtocolError
from cocalc_hub.conat.transport.session import PacketReader, open_packet, read_open
from cocalc_hub.conat.transport.sio import SocketIOClient


class Reader(PacketReader):
    __slots__ = ("got",)

    def __init__(self) -> None:
        self._pending = None
        self.got: list[Packet] = []

    def _dispatch(self, packet: Packet) -> None:
        self.got.append(packet)


class PacketReaderTests(unittest.SynchronousTestCase):
    def test_both_ends_read_packets_with_it(self) -> None:
        self.assertTrue(issubclass(SocketIOClient, PacketReader))
        self.assertTrue(issubclass(EngineClientProtocol, PacketReader))
        self.assertIs(SocketIOClient.on_message, PacketReader.on_message)
        self.assertIs(EngineClientProtocol.on_binary, PacketReader.on_binary)

    def test_attachments_are_put_in_place(self) -> None:
        reader = Reader()
        text, binaries = packets.encode_parts(packets.EVENT, ["x", {"a": b"one", "b": [b"two"]}], ack_id=3)
        reader.on_message(text[1:])
        self.assertEqual(reader.got, [])
        reader.on_binary(binaries[0])
        self.assertEqual(reader.got, [])
        reader.on_binary(binaries[1])
        [packet] = reader.got
        self.assertEqual((packet.type, packet.id, packet.data), (packets.EVENT, 3, ["x", {"a": b"one", "b": [b"two"]}]))
        reader.on_message('2["plain"]')
        self.assertEqual(reader.got[1].data, ["plain"])

    def test_out_of_order_frames_are_protocol_errors(self) -> None:
        reader = Reader()
        with self.assertRaisesRegex(ProtocolError, "binary frame without a packet announcing it"):
            reader.on_binary(b"stray")
        reader.on_message('51-["x",{"_placeholder":true,"num":0}]')
        with self.assertRaisesRegex(ProtocolError, "text frame while binary attachments are due"):
            reader.on_message('2["x"]')

    def test_encode_parts_is_encode_apart(self) -> None:
        for args in (["x"], ["x", b"bin"], ["x", {"k": [b"a", b"b"]}]):
            text, binaries = packets.encode_parts(packets.EVENT, args, nsp="/n", ack_id=1)
            self.assertEqual(packets.encode(packets.EVENT, args, nsp="/n", ack_id=1), [text, *binaries])


class OpenPacketTests(unittest.SynchronousTestCase):
    def test_written_as_before_and_read_back(self) -> None:
        text = open_packet("abc", 25.0, 20.0, 8_000_000)
        self.assertEqual(text, '0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,'
                               '"maxPayload":8000000}')
        self.assertEqual(read_open(text[1:]), (25.0, 20.0))
        self.assertEqual(read_open("{}"), (25.0, 20.0))
        self.assertRaises(ValueError, read_open, "not json")
        self.assertRaises(AttributeError, read_open, json.dumps([1]))
