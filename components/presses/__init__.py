"""KV-cache presses (family ``press``): which key/value entries each layer keeps after the prefill."""
