from blitz.cli import run

if __name__ == "__main__":  # not when a spawned decoding process imports it as __mp_main__
    run()
