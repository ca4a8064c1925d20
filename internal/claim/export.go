package claim

// Check panics when the set's index is inconsistent (tests).
func (s *Set[ID, K, V]) Check() { s.check() }
