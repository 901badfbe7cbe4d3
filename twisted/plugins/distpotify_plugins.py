"""twistd plugins: ``twistd distpotify`` (a replica) and ``twistd distpotify-proxy``."""
# test-case-name: tests.integration.test_packaging

from twisted.application.service import ServiceMaker

distpotify = ServiceMaker(
    "Distpotify replica",
    "distpotify.tap",
    "A replica of the Distpotify music library: API, storage, election, replication.",
    "distpotify",
)

distpotify_proxy = ServiceMaker(
    "Distpotify proxy",
    "proxy.tap",
    "The Distpotify entry point: routes writes to the leader and reads to followers.",
    "distpotify-proxy",
)
