"""The on-box agent and the run store protocol it writes (boto3 and watchdog only, never torch)."""
