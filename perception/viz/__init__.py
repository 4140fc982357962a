"""Pictures of frames: bird's-eye views and camera overlays (PNG), and MCAP writers."""
