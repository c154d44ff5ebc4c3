"""Who may call what: bearer tokens with roles, checked before a request is decoded.

`tokens` reads and reloads the tokens file (hashes only, never the tokens); `policy` decides, per service,
which role a call needs and turns a call's `authorization` metadata into a yes or a gRPC-mappable error.
"""

from recserve.server.auth.policy import Authorizer, RoleCheck
from recserve.server.auth.tokens import Role, TokenStore, new_token, token_entry

__all__ = ["Authorizer", "Role", "RoleCheck", "TokenStore", "new_token", "token_entry"]
