package rtcoder

// LivePingers is the number of watchdogs running in this process.
func LivePingers() int64 { return livePingers.Load() }
