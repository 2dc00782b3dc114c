package lease

import "errors"

var (
	// ErrLost means this instance no longer holds the lease: a renewal
	// failed past the local deadline, another instance holds the key, or
	// the lease was released. The holder must not write any more.
	ErrLost = errors.New("lease lost: another instance may be active; this one must not write")

	// ErrNoStandby means a hand-over was asked for while no standby is
	// registered to take the lease.
	ErrNoStandby = errors.New("no standby is waiting to take over")
)
