"""In-memory twins of pdserve's interfaces, for tests only (`FakeGateway` for `BaseGateway`)."""
