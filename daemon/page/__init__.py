"""The live page calmd serves (live: LivePage, the hub and the HTTP server): each stream's state, its last
labels with scores, recent events with their clips, call verdicts, updated over Server-Sent Events; with a
login, the review of saved detections (api, server, auth; the review itself is calmd.review). Standard
library only, on loopback by default."""
