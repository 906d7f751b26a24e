"""Carriage-return frames folded for human views: moved to agent.protocol.frames (the watcher's
alert excerpt and `ctl tail` fold the same way); re-exported here for the agent."""

from agent.protocol.frames import FrameFolder, fold_frames, last_frame

__all__ = ["FrameFolder", "fold_frames", "last_frame"]
