#!/usr/bin/env python3
"""Run stm32loader 0.7.1 on a pyserial URL such as ``rfc2217://127.0.0.1:7000``.

stm32loader opens its port with ``serial.Serial(port=..., ...)`` (stm32loader/uart.py,
``SerialConnection.connect``), so it only takes device paths. This wrapper changes exactly
that one call: inside ``stm32loader.uart`` the name ``serial`` is replaced by a namespace
whose ``Serial`` is ``serial.serial_for_url``, called with stm32loader's own settings
(baud rate, 8 data bits, parity, 1 stop bit, no flow control, 5 s timeout). pyserial's own
module is not touched, so ``serial_for_url`` still resolves plain paths itself.

Everything else is stm32loader as shipped, on purpose, so that the tests exercise the real
client: its DTR/RTS reset sequence, its retries and timeouts, and its bugs. In particular
0.7.1 names its flush method ``flush_imput_buffer`` while the caller looks for
``flush_input_buffer``, so the input flush after the reset never runs; this wrapper does
not fix that.

Usage: python3 stm32loader_url.py -p rfc2217://HOST:PORT -f F4 [stm32loader options...]
"""

import sys
import types

import serial
import stm32loader.uart
from stm32loader.main import main


def _serial_for_url(port, **settings):
    """Open `port` as ``serial.Serial`` would, but accept pyserial URLs."""
    return serial.serial_for_url(port, **settings)


stm32loader.uart.serial = types.SimpleNamespace(Serial=_serial_for_url)

if __name__ == "__main__":
    main(*sys.argv[1:])
