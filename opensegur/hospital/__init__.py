"""The hospital's configuration as code: a directory of TOML files (GHT, sites, DPIs, MSSanté mailboxes, roles,
identity providers) that can live in the hospital's git, validated with French messages, diffed, applied to the
database with every applied version kept, and described by a JSON Schema for editors.
"""
