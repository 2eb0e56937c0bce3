"""The conformance report an editor attaches to a référencement file: each requirement the platform implements,
the tests that prove it, their results and the messages they exchanged — generated from a test run, never written
by hand."""
