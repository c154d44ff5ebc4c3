"""Fuzzing every RPC of every service with hypothesis, shared by tests/test_fuzz.py and bench/fuzz.py.

`methods` finds the methods and says which statuses each may answer, `strategies` says what to send them,
`values` and `wire` hold the ingredients. Nothing here starts a server.
"""
