from blitz.cli import main

if __name__ == "__main__":  # not when a spawned decoding process imports it as __mp_main__
    raise SystemExit(main())
