//! Helpers shared by the integration tests (starting binaries, free ports, Redis).
