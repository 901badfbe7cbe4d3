"""``distpotify-cluster``: the command lines it runs and the banner it prints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distpotify.cli.cluster import Layout, banner, ensure_key_file, make_admin_password, typed
from distpotify.keys import ClusterKeys

pytestmark = pytest.mark.timeout(60)


def test_replicas_keep_their_heartbeats_on_this_machine() -> None:
    command = Layout().replica_command(1)

    joined = " ".join(command)
    assert command[1:3] == ["-n", "--pidfile="]
    assert "--node-id 2" in joined and "--data-dir data/node2" in joined
    assert "--http-port 8002" in joined and "--amp-port 9002" in joined
    assert "--multicast-interface 127.0.0.1" in joined and "--multicast-ttl 0" in joined
    assert "--host 127.0.0.1" in joined and "--advertise-host 127.0.0.1" in joined


def test_every_replica_knows_how_many_replicas_found_the_cluster() -> None:
    layout = Layout()

    for index in range(len(layout.http_ports)):
        assert f"--cluster-size {len(layout.http_ports)}" in " ".join(
            layout.replica_command(index))


def test_every_replica_gets_the_key_under_the_data_dir() -> None:
    layout = Layout(data=Path("/srv/cluster"))

    for index in range(3):
        assert "--cluster-key-file /srv/cluster/cluster.key" in " ".join(
            layout.replica_command(index))


def test_the_key_is_made_once_and_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"

    made = ensure_key_file(path)
    first = path.read_text()
    again = ensure_key_file(path)

    assert (made, again) == (True, False)
    assert path.read_text() == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(ClusterKeys.load(path).key_ids) == 1


def test_each_process_logs_to_its_own_file_under_the_data_dir() -> None:
    layout = Layout(data=Path("/srv/cluster"))

    assert "--logfile=/srv/cluster/node3.log" in layout.replica_command(2)
    assert "--logfile=/srv/cluster/proxy.log" in layout.proxy_command()


def test_the_proxy_fronts_every_replica_on_8080() -> None:
    joined = " ".join(Layout().proxy_command())

    assert "distpotify-proxy --host 127.0.0.1 --port 8080" in joined
    assert "--backends 127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003" in joined


def test_the_banner_says_where_to_go() -> None:
    view = {"backends": [
        {"http": f"http://127.0.0.1:800{i}", "node_id": i,
         "role": "leader" if i == 3 else "follower"} for i in (1, 2, 3)]}

    text = banner(Layout(), view)

    assert "http://127.0.0.1:8080/" in text and "/proxy/status" in text
    assert "http://127.0.0.1:8003/status (leader)" in text


def test_the_proxy_signs_its_polls_with_the_cluster_key() -> None:
    joined = " ".join(Layout(data=Path("/srv/cluster")).proxy_command())

    assert "--cluster-key-file /srv/cluster/cluster.key" in joined


@pytest.mark.parametrize("auth", [False, True])
def test_every_process_gets_the_auth_switch(auth: bool) -> None:
    layout = Layout(auth=auth)
    flag = f"--auth {'on' if auth else 'off'}"

    assert flag in " ".join(layout.proxy_command())
    for index in range(3):
        assert flag in " ".join(layout.replica_command(index))


def test_accounts_are_on_by_default() -> None:
    layout = Layout()

    assert layout.auth is True
    assert "--auth on" in " ".join(layout.proxy_command())


def test_with_accounts_the_banner_shows_scripts_how_to_send_the_admins_token() -> None:
    view = {"backends": []}

    text = banner(Layout(data=Path("/srv/cluster")), view)
    open_text = banner(Layout(auth=False), view)

    assert "TOKEN=$(curl" in text and "/srv/cluster/admin.password" in text
    assert 'curl -X POST -H "Authorization: Bearer $TOKEN"' in text
    assert "--auth on: the library needs a login" in text
    assert "TOKEN" not in open_text and "--auth off: the library is open" in open_text


def test_the_banner_suggests_importing_a_music_folder() -> None:
    text = banner(Layout(data=Path("/srv/cluster")), VIEW)
    open_text = banner(Layout(auth=False), VIEW)

    line = next(line for line in text.splitlines() if "distpotify-import" in line)
    assert 'DISTPOTIFY_PASSWORD="$(cat /srv/cluster/admin.password)"' in line
    assert line.endswith("~/Music --server http://127.0.0.1:8080 --user admin")
    assert "--user" not in next(line for line in open_text.splitlines()
                                if "distpotify-import" in line)


def test_the_admin_password_is_random_and_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "admin.password"

    first = make_admin_password(path)
    second = make_admin_password(tmp_path / "other")

    assert path.read_text() == first + "\n" and len(first) >= 16 and first != second
    assert path.stat().st_mode & 0o777 == 0o600


VIEW = {"backends": [{"http": f"http://127.0.0.1:800{i}", "node_id": i, "role": "follower"}
                     for i in (1, 2, 3)]}


def test_the_first_banner_prints_the_admin_login() -> None:
    text = banner(Layout(data=Path("/srv/cluster")), VIEW, new_password="s3cret-password")

    assert "user admin, password s3cret-password at http://127.0.0.1:8080/" in text
    assert "/srv/cluster/admin.password" in text


def test_later_banners_name_the_password_file_only() -> None:
    text = banner(Layout(data=Path("/srv/cluster")), VIEW)

    assert "user admin, the password in /srv/cluster/admin.password" in text


def test_a_line_typed_is_read_nothing_typed_is_empty_and_an_ended_input_is_none() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as stream:
        assert typed(stream, 0.05) == ""
        os.write(write_end, b"\n")
        assert typed(stream, 5) == "\n"
        os.close(write_end)
        assert typed(stream, 5) is None
