//go:build !linux

package engine

import "errors"

type pollFD struct{}

func setFIFO(int) error { return errors.New("realtime loops need Linux") }

func enterRealtime(int) error { return errors.New("realtime loops need Linux") }

func (r *realtimeState) wait(*Engine) error { return nil }

func openWake() (int, error) { return -1, errors.New("realtime loops need Linux") }

func signalWake(int) {}

func closeWake(int) {}
