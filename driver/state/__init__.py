"""Node-local truth: prepare/unprepare, the checkpoint, CDI specs and the node lock."""
