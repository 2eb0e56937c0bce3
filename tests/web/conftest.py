"""The offline application's runtime (demo GHT, no workers), shared by the web tests."""

from tests.web.test_rest_intake import offline  # noqa: F401  (fixture)
