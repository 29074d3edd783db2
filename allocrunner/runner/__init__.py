"""The AllocRunner: runs one allocation's task group through its whole lifecycle.

The package itself starts no threads and declares no locks; each module states its
own (the runner's state-handler thread, the task set, the health watcher, the
lifecycle gates). Owner: the Client builds one AllocRunner per allocation."""
