package testenv

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcessCPU is the CPU time (user and system) process pid has used so
// far, from Linux's /proc; 0 when it cannot be read.
func ProcessCPU(pid int) time.Duration {
	f, ok := procStat(pid)
	if !ok {
		return 0
	}
	return time.Duration(f[11]+f[12]) * time.Second / userHZ
}

// userHZ is Linux's clock tick for /proc's times.
const userHZ = 100

// procStat is /proc/pid/stat's numeric fields after the command name:
// [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime (clock
// ticks); the others are 0.
func procStat(pid int) ([15]int, bool) {
	var out [15]int
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return out, false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return out, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < len(out) {
		return out, false
	}
	for j := range out {
		out[j], _ = strconv.Atoi(fields[j])
	}
	return out, true
}
