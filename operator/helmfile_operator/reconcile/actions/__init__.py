"""One module per action the release state machine can take."""
