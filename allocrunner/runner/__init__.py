"""The AllocRunner: runs one allocation's task group through its whole lifecycle."""
