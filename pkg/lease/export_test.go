package lease

// StopRenewing makes l stop renewing without releasing, as a crash would.
func StopRenewing(l *Lease) {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}
