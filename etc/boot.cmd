# otad A/B boot script for a U-Boot without CONFIG_BOOTCOUNT_LIMIT: the stock rpi_0_w U-Boot
# (Debian's u-boot-rpi) on a Raspberry Pi Zero W. It counts trial boots and rolls back as
# BOOTCOUNT_ENV + altbootcmd would (docs/deploying.md, section 2, describes the rules). Build it
# and put it on p1 next to uboot.env, where distro_bootcmd finds it:
#   mkimage -A arm -O linux -T script -C none -n "otad A/B boot" -d boot.cmd boot.scr
# (the Debian package ships both in /usr/share/otad/; scripts/pi-image puts boot.scr on the card).
#
# The env is the one U-Boot loaded from uboot.env (ENV_IS_IN_FAT), so saveenv writes it back
# there. Variables: rootpart (2 or 3), upgrade_available, bootcount, bootlimit. otad arms a trial
# with "rootpart=Y upgrade_available=1 bootcount=0" and confirms with "upgrade_available=0
# bootcount=0"; this script clears both when it rolls back. Optional: otad_extra_bootargs, added
# to the kernel command line, and otad_fdt_fixup, run on the device tree (the QEMU harness puts
# its emulator workarounds there; a real card has neither).
#
# Each slot is self-contained: /boot/vmlinuz, /boot/initrd.img (optional) and
# /boot/dtbs/${fdtfile} (optional; else the firmware's device tree at ${fdt_addr}) are loaded
# from the slot that boots, so the kernel switches with the root filesystem.
#
# A U-Boot with BOOTCOUNT_LIMIT + BOOTCOUNT_ENV counts by itself: give its env
# otad_uboot_counts=1 (so this script does not count twice) and this altbootcmd:
#   if test "${rootpart}" = "2"; then setenv rootpart 3; else setenv rootpart 2; fi; setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd

# A bad-CRC or missing uboot.env leaves U-Boot on its default env, which has no rootpart: boot
# slot 2 without saving (the default env would replace the whole file).
if test "${rootpart}" != 2 && test "${rootpart}" != 3; then
	echo "otad: no rootpart 2 or 3 in the environment: booting slot 2"
	setenv rootpart 2
fi

# Count only while a trial is armed, like BOOTCOUNT_ENV: no SD card write on a normal boot.
if test "${otad_uboot_counts}" != 1 && test "${upgrade_available}" -ne 0; then
	test -n "${bootcount}" || setenv bootcount 0
	# setexpr reads and writes hex: 0..9 are the same in decimal, which otad reads, as long as
	# bootlimit <= 8. "0x" makes test read the count as hex, so larger limits still compare right.
	setexpr bootcount ${bootcount} + 1
	if test "${bootlimit}" -ne 0 && test 0x${bootcount} -gt ${bootlimit}; then
		echo "otad: boot ${bootcount} of slot ${rootpart} exceeds bootlimit ${bootlimit}: rolling back"
		if test "${rootpart}" = 2; then setenv rootpart 3; else setenv rootpart 2; fi
		setenv upgrade_available 0
		setenv bootcount 0
	fi
	# One saveenv for count and rollback: a power cut leaves the old env or the new one.
	saveenv
fi

# The one line a test harness (tests/pi/board.py) reads to see what U-Boot decided.
echo "otad-boot: rootpart=${rootpart} bootcount=${bootcount} upgrade_available=${upgrade_available} bootlimit=${bootlimit}"

# ttyS1 is the Zero W's mini UART (serial1 in its device tree; the PL011 belongs to Bluetooth).
# panic=10: a kernel that cannot start init resets the board, so a trial boot counts again.
setenv bootargs "console=tty1 console=ttyS1,115200 root=/dev/mmcblk0p${rootpart} rootfstype=ext4 rootwait rw panic=10 otad.rootpart=${rootpart} ${otad_extra_bootargs}"
setenv otad_fdt ${fdt_addr}
if load mmc 0:${rootpart} ${fdt_addr_r} /boot/dtbs/${fdtfile}; then
	setenv otad_fdt ${fdt_addr_r}
fi
# Optional: otad_fdt_fixup, commands run on the device tree at ${otad_fdt} before the kernel gets
# it (the QEMU harness removes the Bluetooth node there, so that the PL011 is a plain ttyAMA0 for
# its serial network; a real card has none).
if test -n "${otad_fdt_fixup}"; then
	run otad_fdt_fixup
fi
if load mmc 0:${rootpart} ${kernel_addr_r} /boot/vmlinuz; then
	if load mmc 0:${rootpart} ${ramdisk_addr_r} /boot/initrd.img; then
		bootz ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${otad_fdt}
	else
		bootz ${kernel_addr_r} - ${otad_fdt}
	fi
fi

# Only reached if the slot cannot boot. During a trial, reset so the next boot counts: U-Boot
# v2023.01 has no Pi watchdog driver, so nothing else would end the wait at the prompt.
echo "otad: slot ${rootpart} did not boot"
if test "${upgrade_available}" -ne 0; then
	sleep 3
	reset
fi
