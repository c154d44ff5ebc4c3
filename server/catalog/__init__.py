"""The live catalog: the model version's items plus the changes since, and retrieval over both.

`rows` stores one embedding per row (appended, never rewritten), `live` applies catalog changes and owns
the id maps, `view` is what a batch sees and searches: the Annoy index of the base (or last rebuilt)
catalog plus an exact search of the rows added since.
"""
