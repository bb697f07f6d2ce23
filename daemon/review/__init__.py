"""How a site teaches calm: verdicts on recorded clips, Apply/Undo/Restore of classifier versions
(workflow), the review queue's filters (query), clip records (records) and the refit child process (teach)."""
