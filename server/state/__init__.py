"""Live state: what changed since the model version was built, kept where every replica can see it.

Two kinds of state, each with one small interface and one module per backend:
- user history (`history`): the events of each user, read by every batch as context;
- catalog changes: items upserted or deleted since the base catalog, applied to the live catalog
  (`recserve.server.catalog`).

`memory` keeps both in this process, durable through an append-only log (`log`); `redis_backend` keeps them
in Redis, shared by every replica. The write path (validate, log, apply, acknowledge) is `writes`.
"""
