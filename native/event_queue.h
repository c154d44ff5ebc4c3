// Events from grpc++'s threads to a Python event loop, woken through an eventfd.
//
// The eventfd is written once per empty -> non-empty transition, so a burst of completions costs the event
// loop one wake-up, and Python takes the whole burst in one call. grpc++'s threads never touch Python.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

namespace recserve {

template <typename Event>
class EventQueue {
 public:
  EventQueue() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error("eventfd failed");
  }
  ~EventQueue() { close(fd_); }
  EventQueue(const EventQueue&) = delete;
  EventQueue& operator=(const EventQueue&) = delete;

  int fd() const { return fd_; }

  void Push(Event event) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (events_.empty()) oldest_ = std::chrono::steady_clock::now();
    events_.push_back(std::move(event));
    if (!signalled_) {
      signalled_ = true;
      uint64_t one = 1;
      ssize_t written = write(fd_, &one, sizeof(one));
      (void)written;
    }
  }

  // Clear the eventfd first, then take the events: a push after the clear is either taken here or
  // signals again, so no wake-up is lost.
  std::vector<Event> Take() {
    uint64_t count;
    ssize_t got = read(fd_, &count, sizeof(count));
    (void)got;
    std::vector<Event> taken;
    std::lock_guard<std::mutex> lock(mutex_);
    taken.swap(events_);
    signalled_ = false;
    return taken;
  }

  // How long the oldest event not yet taken has waited (0 when none waits): how far the consumer lags.
  int64_t OldestAgeNs() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (events_.empty()) return 0;
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - oldest_)
        .count();
  }

 private:
  int fd_;
  std::mutex mutex_;
  std::vector<Event> events_;
  std::chrono::steady_clock::time_point oldest_;
  bool signalled_ = false;
};

}  // namespace recserve
