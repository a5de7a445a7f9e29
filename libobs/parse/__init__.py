"""Pure parsers: any bytes in, a result or None out, never an exception."""
