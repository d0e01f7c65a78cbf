"""Pure torch nn.Modules of ksrnet (no training code, no Lightning): the recognizer (parseq), and
the flow, alignment, fusion and restoration parts of KSR-Net. Import the submodule you need; nothing
here is registered or scanned at import time."""
