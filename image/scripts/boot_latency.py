#!/usr/bin/env python3
"""QEMU start to weft's greeting on the control socket, for images and firmwares side by
side (docs/PERFORMANCE.md, "Boot"). Runs alternate between the configurations.

usage: boot_latency.py RUNS LABEL=IMAGE[:FIRMWARE] ...
  FIRMWARE is a -bios file (qboot.rom); without it QEMU's default (SeaBIOS on q35).
The q35 command line of image/src/qemu.rs, with -netdev user in place of taps.
"""
import os, socket, statistics, subprocess, sys, tempfile, time


def boot(image, firmware, sock):
    if os.path.exists(sock):
        os.unlink(sock)
    bios = ["-bios", firmware] if firmware else []
    args = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", *bios,
            "-m", "128M", "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
            "-vga", "none", "-kernel", image, "-append", "", "-serial", "null",
            "-netdev", "user,id=uplink", "-device", "virtio-net-pci,netdev=uplink,addr=0x3",
            "-netdev", "user,id=link", "-device", "virtio-net-pci,netdev=link,addr=0x4",
            "-chardev", f"socket,id=control,path={sock},server=on,wait=off",
            "-device", "virtio-serial-pci,addr=0x5",
            "-device", "virtserialport,chardev=control,nr=1,name=org.weft.control"]
    t0 = time.monotonic()
    qemu = subprocess.Popen(args)
    try:
        while not os.path.exists(sock):
            time.sleep(0.0005)
        s = socket.socket(socket.AF_UNIX)
        while True:
            try:
                s.connect(sock)
                break
            except OSError:
                time.sleep(0.0005)
        s.makefile("rb").readline()
        took = (time.monotonic() - t0) * 1000
        s.close()
        return took
    finally:
        qemu.kill()
        qemu.wait()


def main():
    runs = int(sys.argv[1])
    configs = []
    for arg in sys.argv[2:]:
        label, spec = arg.split("=", 1)
        image, _, firmware = spec.partition(":")
        configs.append((label, image, firmware))
    results = {label: [] for label, _, _ in configs}
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "control.sock")
        for _ in range(runs):
            for label, image, firmware in configs:
                results[label].append(boot(image, firmware, sock))
    for label, ms in results.items():
        print(f"{label:20} median {statistics.median(ms):6.1f} ms  range {min(ms):.0f}-{max(ms):.0f}")


if __name__ == "__main__":
    main()
