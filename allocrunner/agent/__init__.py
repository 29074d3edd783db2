"""The long-running node agent: one owner per data dir, Nomad's HTTP API over a Client."""
