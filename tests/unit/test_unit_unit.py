"""``syncsup unit``: the drop-in written for a config (pure: a config in,
unit-file lines out) and the quoting of paths in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncsup import config, unit

FAKE = Path("/etc/syncsup/www.toml")


def _conf(settings: dict[str, Any], targets: list[Any], source: str = "/srv/www") -> Any:
    return config.parse({"settings": {"state_dir": "/var/lib/syncsup/www", **settings},
                         "sync": [{"name": "www", "source": source, "targets": targets}]},
                        FAKE)


def _values(text: str, key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(f"{key}=")]


def test_local_targets_and_log_dirs_are_made_writable() -> None:
    text = unit.dropin(_conf({"log_file": "/var/log/lsyncd/lsyncd.log",
                              "status_file": "/var/log/lsyncd/lsyncd.status"},
                             ["/mnt/mirror/www", "/srv/with space", "/srv/50%"]))
    assert _values(text, "ReadWritePaths") == [
        "-/var/log/lsyncd", "-/mnt/mirror/www", '"-/srv/with space"', "-/srv/50%%"]
    assert "ProtectHome" not in text
    assert _values(text, "IPAddressDeny") == ["any"]
    assert _values(text, "IPAddressAllow") == ["localhost"]


def test_a_state_dir_elsewhere_and_a_source_under_home() -> None:
    conf = config.parse({"settings": {"state_dir": "/srv/state"},
                         "sync": [{"source": "/home/alice/www", "targets": ["/mnt/m"]}]}, FAKE)
    text = unit.dropin(conf)
    assert _values(text, "ProtectHome") == ["read-only"]
    assert _values(text, "ReadWritePaths")[0] == "-/srv/state"


def test_remote_targets_are_allowed_by_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unit, "_addresses",
                        lambda host: {"h1": ["192.0.2.1"], "h2": ["192.0.2.2", "2001:db8::2"]}
                        [host])
    monkeypatch.setattr(unit, "nameservers", lambda: [])
    text = unit.dropin(_conf({}, ["h2:/srv/b", "backup@h1:/srv/a"]))
    assert _values(text, "IPAddressAllow") == ["localhost 192.0.2.1 192.0.2.2 2001:db8::2"]
    assert "ReadWritePaths" not in text


@pytest.mark.parametrize(("settings", "addresses", "why"), [
    ({"metrics": "0.0.0.0:9473"}, ["192.0.2.1"], "metrics listen on 0.0.0.0:9473"),
    ({}, None, "h1 is reached through a proxy, or does not resolve now"),
])
def test_no_allow_list_when_it_cannot_be_pinned(settings: dict[str, Any],
                                                addresses: list[str] | None, why: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unit, "_addresses", lambda host: addresses)
    text = unit.dropin(_conf(settings, ["h1:/srv/a"]))
    assert "IPAddress" not in text.replace("# No IP allow-list", "")
    assert why in text


def test_metrics_on_loopback_keep_the_allow_list() -> None:
    text = unit.dropin(_conf({"metrics": "127.0.0.1:9473"}, ["/mnt/m"]))
    assert _values(text, "IPAddressAllow") == ["localhost"]


def test_the_unit_names_the_binary_and_documentation() -> None:
    text = unit.render_unit("/opt/syncsup/bin/syncsup", "file:///opt/x.1")
    assert "ExecStart=/opt/syncsup/bin/syncsup start /etc/syncsup/%i.toml" in text
    assert "Documentation=file:///opt/x.1" in text


def test_paths_under_run_are_bound_into_the_hidden_run() -> None:
    # The unit hides /run behind an empty tmpfs: ReadWritePaths= there would
    # name a path that does not exist in the sandbox.
    conf = config.parse({"settings": {"state_dir": "/var/lib/syncsup/www",
                                      "status_file": "/run/lsyncd/lsyncd.status"},
                         "sync": [{"source": "/run/media/src", "targets": ["/mnt/m"]}]}, FAKE)
    text = unit.dropin(conf)
    assert _values(text, "BindPaths") == ["-/run/lsyncd"]
    assert _values(text, "BindReadOnlyPaths") == ["-/run/media/src"]
    assert _values(text, "ReadWritePaths") == ["-/mnt/m"]


def test_the_resolvers_stay_reachable_for_a_host_name(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nsearch example.org\nnameserver 192.0.2.53\n"
                      "nameserver fe80::1%eth0\nnameserver 127.0.0.53\nnameserver junk\n")
    real = unit.nameservers
    monkeypatch.setattr(unit, "nameservers", lambda: real(str(resolv)))
    monkeypatch.setattr(unit, "_addresses", lambda host: ["192.0.2.1"])
    by_name = unit.dropin(_conf({}, ["backup@h1:/srv/a"]))
    assert _values(by_name, "IPAddressAllow") == ["localhost 192.0.2.1 192.0.2.53 fe80::1"]
    by_address = unit.dropin(_conf({}, ["backup@192.0.2.1:/srv/a"]))
    assert _values(by_address, "IPAddressAllow") == ["localhost 192.0.2.1"]


def test_an_unreadable_resolv_conf_adds_nothing(tmp_path: Path) -> None:
    assert unit.nameservers(str(tmp_path / "missing")) == []


def test_the_unit_hides_run_but_what_it_needs() -> None:
    text = unit.render_unit("/opt/syncsup/bin/syncsup", "man:syncsup(1)")
    assert _values(text, "TemporaryFileSystem") == ["/run:ro"]
    bound = " ".join(_values(text, "BindReadOnlyPaths")).split()
    assert "-/run/systemd/notify" in bound
    assert _values(text, "RuntimeDirectory") == ["syncsup"]


def test_the_sysusers_file_goes_where_systemd_reads_it(tmp_path: Path) -> None:
    """The unit's User= comes with the sysusers.d line that creates it: in
    the system's directory for the system's unit directories, else beside
    the unit."""
    assert unit.sysusers_dir(Path("/etc/systemd/system")) == Path("/etc/sysusers.d")
    assert unit.sysusers_dir(Path("/usr/lib/systemd/system")) == Path("/usr/lib/sysusers.d")
    assert unit.sysusers_dir(tmp_path) == tmp_path
    line = unit.SYSUSERS.splitlines()[-1].split()
    assert line[:2] == ["u", "syncsup"] and line[-2:] == ["/var/lib/syncsup",
                                                          "/usr/sbin/nologin"]
    user = [ln for ln in unit.TEMPLATE.splitlines() if ln.startswith("User=")]
    assert user == ["User=syncsup"]
