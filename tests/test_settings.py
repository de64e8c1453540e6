"""Settings: every option and environment variable, and each error."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial import unittest

from cocalc_hub.settings import PARTS, SettingsError, from_options, package_static_dir
from tests.support import free_tcp_port, make_self_signed_cert


class SettingsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()
        self.data = self.tmp / "data"

    def build(self, options: dict[str, object] | None = None, env: dict[str, str] | None = None):
        opts: dict[str, object] = {"data": str(self.data)}
        opts.update(options or {})
        return from_options(opts, env or {})

    def assertSettingError(self, setting: str, options=None, env=None, contains: str = "") -> SettingsError:
        e = self.assertRaises(SettingsError, self.build, options, env)
        self.assertEqual(e.setting, setting)
        self.assertIn(setting, str(e))
        self.assertNotIn("\n", str(e))
        if contains:
            self.assertIn(contains, str(e))
        return e

    # --port / PORT / --hostname ---------------------------------------------------

    def test_defaults(self) -> None:
        s = self.build()
        self.assertEqual(s.listen, "tcp:5000:interface=127.0.0.1")
        self.assertEqual(s.hostname, "127.0.0.1")
        self.assertEqual(s.base_path, "/")
        self.assertEqual(s.parts, frozenset(PARTS))
        self.assertEqual(s.project_mode, "single-user")
        self.assertEqual(s.log_format, "text")
        self.assertEqual(s.log_level, "info")
        self.assertFalse(s.https)
        self.assertFalse(s.trust_proxy)
        self.assertEqual(s.static_dir, package_static_dir())
        self.assertEqual(s.data_dir, self.data.resolve())
        self.assertEqual(s.secrets_dir, self.data.resolve() / "secrets")
        self.assertEqual(s.projects, str(self.data.resolve() / "projects" / "[project_id]"))
        self.assertEqual(s.shutdown_grace, 10.0)

    def test_bare_port_uses_hostname(self) -> None:
        s = self.build({"port": "5099", "hostname": "0.0.0.0"})
        self.assertEqual(s.listen, "tcp:5099:interface=0.0.0.0")

    def test_ipv6_hostname_is_escaped(self) -> None:
        s = self.build({"port": "5099", "hostname": "::1"})
        self.assertEqual(s.listen, "tcp:5099:interface=\\:\\:1")

    def test_hostname_from_env(self) -> None:
        s = self.build(env={"COCALC_HUB_HOSTNAME": "127.0.0.2"})
        self.assertEqual(s.listen, "tcp:5000:interface=127.0.0.2")

    def test_port_env_when_no_option(self) -> None:
        self.assertEqual(self.build(env={"PORT": "6001"}).listen, "tcp:6001:interface=127.0.0.1")
        self.assertEqual(self.build({"port": "6002"}, env={"PORT": "6001"}).listen, "tcp:6002:interface=127.0.0.1")

    def test_endpoint_strings_pass_through(self) -> None:
        for desc in ("tcp:5001:interface=127.0.0.1", f"unix:{self.tmp}/hub.sock"):
            self.assertEqual(self.build({"port": desc}).listen, desc)

    def test_bad_port_values(self) -> None:
        for bad in ("70000", "-1", "5000x", "abc", "99999999999"):
            self.assertSettingError("--port", {"port": bad})
        self.assertSettingError("PORT", env={"PORT": "nope"})

    def test_bad_endpoint_string(self) -> None:
        self.assertSettingError("--port", {"port": "tcp:notaport"})
        self.assertSettingError("--port", {"port": "bogus:123"})

    def test_systemd_endpoint_without_socket(self) -> None:
        self.assertSettingError("--port", {"port": "systemd:domain=INET:index=0"},
                                contains="systemd passed no such socket")

    def test_bad_hostname(self) -> None:
        self.assertSettingError("--hostname", {"hostname": "a b"})

    # TLS --------------------------------------------------------------------------

    def test_https_key_and_cert(self) -> None:
        key, cert = make_self_signed_cert(self.tmp)
        s = self.build({"port": "5443", "https-key": str(key), "https-cert": str(cert)})
        self.assertTrue(s.listen.startswith("ssl:5443:interface=127.0.0.1:privateKey="))
        self.assertTrue(s.https)

    def test_https_needs_both(self) -> None:
        key, cert = make_self_signed_cert(self.tmp)
        self.assertSettingError("--https-key/--https-cert", {"https-key": str(key)})
        self.assertSettingError("--https-key/--https-cert", {"https-cert": str(cert)})

    def test_unreadable_key_file(self) -> None:
        key, cert = make_self_signed_cert(self.tmp)
        self.assertSettingError("--https-key", {"https-key": str(self.tmp / "missing.pem"),
                                               "https-cert": str(cert)}, contains="missing.pem")
        if os.geteuid() != 0:
            key.chmod(0)
            self.assertSettingError("--https-key", {"https-key": str(key), "https-cert": str(cert)})

    def test_garbage_key_file(self) -> None:
        _, cert = make_self_signed_cert(self.tmp)
        junk = self.tmp / "junk.pem"
        junk.write_text("not a key")
        self.assertSettingError("--https-key/--https-cert", {"https-key": str(junk), "https-cert": str(cert)})

    def test_https_with_endpoint_string_is_refused(self) -> None:
        key, cert = make_self_signed_cert(self.tmp)
        self.assertSettingError("--https-key/--https-cert",
                                {"port": "tcp:5000", "https-key": str(key), "https-cert": str(cert)})

    def test_ssl_endpoint_string_marks_https(self) -> None:
        key, cert = make_self_signed_cert(self.tmp)
        s = self.build({"port": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"})
        self.assertTrue(s.https)

    # BASE_PATH -------------------------------------------------------------------

    def test_base_path(self) -> None:
        self.assertEqual(self.build(env={"BASE_PATH": "/hub"}).base_path, "/hub")
        self.assertEqual(self.build(env={"BASE_PATH": "/a/b-c_d.e"}).base_path, "/a/b-c_d.e")
        s = self.build(env={"BASE_PATH": "/hub"})
        self.assertEqual(s.path("/static/x"), "/hub/static/x")
        self.assertEqual(self.build().path("/static/x"), "/static/x")

    def test_bad_base_paths(self) -> None:
        for bad in ("hub", "/hub/", "/a//b", "/a/../b", "/a/./b", "http://x/y", "/a b", "/a\x00", "/<x>"):
            self.assertSettingError("BASE_PATH", env={"BASE_PATH": bad})

    def test_base_path_message_names_value(self) -> None:
        e = self.assertSettingError("BASE_PATH", env={"BASE_PATH": "abc"})
        self.assertIn("'abc'", str(e))
        self.assertIn("must start with '/'", str(e))

    # data, secrets, projects, static ---------------------------------------------------

    def test_data_from_env(self) -> None:
        target = self.tmp / "envdata"
        s = from_options({}, {"DATA": str(target)})
        self.assertEqual(s.data_dir, target.resolve())
        self.assertTrue(target.is_dir())

    def test_data_option_beats_env(self) -> None:
        s = self.build(env={"DATA": str(self.tmp / "other")})
        self.assertEqual(s.data_dir, self.data.resolve())

    def test_default_data_dir_uses_xdg(self) -> None:
        s = from_options({}, {"XDG_DATA_HOME": str(self.tmp / "xdg")})
        self.assertEqual(s.data_dir, (self.tmp / "xdg" / "cocalc-hub").resolve())

    def test_secrets_dir_is_private(self) -> None:
        s = self.build()
        self.assertEqual(s.secrets_dir.stat().st_mode & 0o777, 0o700)

    def test_unwritable_data_dir(self) -> None:
        blocker = self.tmp / "file"
        blocker.write_text("x")
        self.assertSettingError("--data", {"data": str(blocker)})
        self.assertSettingError("--data", {"data": str(blocker / "sub")})
        self.assertSettingError("DATA", {"data": None}, env={"DATA": str(blocker)})
        if os.geteuid() != 0:
            ro = self.tmp / "ro"
            ro.mkdir()
            ro.chmod(0o500)
            self.addCleanup(ro.chmod, 0o700)
            self.assertSettingError("--data", {"data": str(ro)}, contains="not writable")

    def test_projects_template(self) -> None:
        s = self.build(env={"PROJECTS": "/srv/projects/[project_id]/home"})
        self.assertEqual(s.projects, "/srv/projects/[project_id]/home")
        self.assertSettingError("PROJECTS", env={"PROJECTS": "/srv/projects"})

    def test_static_dir(self) -> None:
        static = self.tmp / "static"
        static.mkdir()
        self.assertEqual(self.build({"static": str(static)}).static_dir, static.resolve())
        self.assertSettingError("--static", {"static": str(self.tmp / "missing")})

    # modes and flags -----------------------------------------------------------------

    def test_parts(self) -> None:
        self.assertEqual(self.build({"conat-server": True}).parts, {"conat-server"})
        broker = {"CONAT_SERVER": "http://127.0.0.1:5000"}
        self.assertEqual(self.build({"conat-api": True, "conat-persist": True}, env=broker).parts,
                         {"conat-api", "conat-persist"})
        self.assertEqual(self.build({"all": True, "conat-api": True}).parts, frozenset(PARTS))
        self.assertTrue(self.build({"proxy-server": True}).serves_http)
        self.assertFalse(self.build({"conat-persist": True}, env=broker).serves_http)

    def test_project_mode(self) -> None:
        self.assertEqual(self.build({"mode": "multi-user"}).project_mode, "multi-user")
        self.assertEqual(self.build(env={"COCALC_MODE": "multi-user"}).project_mode, "multi-user")
        self.assertEqual(self.build({"multi-user": True}).project_mode, "multi-user")
        self.assertSettingError("--mode", {"mode": "kucalc"}, contains="unknown mode")
        self.assertSettingError("COCALC_MODE", env={"COCALC_MODE": "weird"})

    def test_log_format_and_level(self) -> None:
        self.assertEqual(self.build({"log-format": "json"}).log_format, "json")
        self.assertEqual(self.build({"log-level": "debug"}).log_level, "debug")
        self.assertEqual(self.build({"log-level": "WARNING"}).log_level, "warn")
        self.assertSettingError("--log-format", {"log-format": "xml"})
        self.assertSettingError("--log-level", {"log-level": "loud"})

    def test_trust_proxy_and_grace(self) -> None:
        s = self.build({"trust-proxy": True, "shutdown-grace": "2.5"})
        self.assertTrue(s.trust_proxy)
        self.assertEqual(s.shutdown_grace, 2.5)
        self.assertSettingError("--shutdown-grace", {"shutdown-grace": "soon"})
        self.assertSettingError("--shutdown-grace", {"shutdown-grace": "-1"})

    def test_port_in_use_is_not_a_settings_error(self) -> None:
        # Binding happens at start (see test_tap); settings only parse the description.
        port = free_tcp_port()
        self.assertEqual(self.build({"port": str(port)}).listen, f"tcp:{port}:interface=127.0.0.1")
