package rtgorilla

// LivePingers is the number of pingers running in this process.
func LivePingers() int64 { return livePingers.Load() }
