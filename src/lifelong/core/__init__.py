"""The bottom layer, torch only: Batch and the Strategy hooks, the Learner loop, tasks and streams, state
and checkpoints, spec binding, several processes, and the forgetting metrics. Imports nothing above it."""
