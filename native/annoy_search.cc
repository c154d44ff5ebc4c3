// Batched, GIL-free nearest-neighbour lookups in an Annoy index file (angular metric, int32 ids, float32).
//
// Why: Annoy's Python API answers one query per call, and each call takes the GIL twice (to read its
// arguments, to build its result list). A batch's lookups run on threads that then queue for the GIL
// behind the event loop's bursts (answering a batch's callers, admitting the next ones) while a core sits
// idle. Here one call searches a whole chunk of a batch's queries with the GIL released throughout.
//
// The index is still built and written by Annoy; this reads the same memory-mapped file and runs the same
// search: a best-first walk of every tree, ordered by the smallest margin seen on the way down, that stops
// once `search_k` candidate items are gathered, then the exact angular distance of each distinct candidate
// and the `count` closest, ties by id. It differs in one place: candidates are de-duplicated with a
// per-item mark instead of a sort of the whole candidate list.
//
// The file, as Annoy lays it out: fixed-size nodes of `int32 n_descendants; {int32 children[2] | float
// norm}; float v[f]`. An item is a node with one descendant (its vector, its squared norm); a node with up
// to f + 2 descendants lists their ids from `children` on; a larger node holds its split plane's normal and
// two children. The roots are copied to the end of the file: the run of trailing nodes with the most
// descendants (the item count).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

constexpr size_t kHeaderBytes = 12;  // n_descendants and the children/norm union, before the vector

// x . y over f floats. Eight partial sums, so the compiler keeps them in vector registers.
#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
float Dot(const float* x, const float* y, int f) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= f; i += 8) {
    for (int lane = 0; lane < 8; ++lane) lanes[lane] += x[i + lane] * y[i + lane];
  }
  float sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  for (; i < f; ++i) sum += x[i] * y[i];
  return sum;
}

class AnnoyForest {
 public:
  AnnoyForest(const std::string& path, int dimension)
      : dimension_(dimension), node_bytes_(kHeaderBytes + sizeof(float) * static_cast<size_t>(dimension)) {
    if (dimension <= 0) throw std::invalid_argument("dimension must be positive");
    Map(path);
    FindRoots(path);
  }
  ~AnnoyForest() { Close(); }
  AnnoyForest(const AnnoyForest&) = delete;
  AnnoyForest& operator=(const AnnoyForest&) = delete;

  int32_t n_items() const { return n_items_; }
  int32_t n_trees() const { return static_cast<int32_t>(roots_.size()); }
  int dimension() const { return dimension_; }

  // Per query (a row of `queries`), the ids of its `counts[row]` nearest items, nearest first: row r of
  // the returned (rows, max count) array holds lengths[r] of them. search_k -1 means count x trees.
  std::pair<py::array_t<int32_t>, py::array_t<int32_t>> Search(
      py::array_t<float, py::array::c_style | py::array::forcecast> queries,
      py::array_t<int32_t, py::array::c_style | py::array::forcecast> counts, int search_k) {
    if (queries.ndim() != 2 || queries.shape(1) != dimension_) {
      throw std::invalid_argument("queries must be (n, " + std::to_string(dimension_) + ") float32");
    }
    const py::ssize_t rows = queries.shape(0);
    if (counts.ndim() != 1 || counts.shape(0) != rows) throw std::invalid_argument("one count per query");
    const int32_t* wanted = counts.data();
    int32_t width = 0;
    for (py::ssize_t row = 0; row < rows; ++row) {
      if (wanted[row] < 0) throw std::invalid_argument("counts must not be negative");
      width = std::max(width, std::min(wanted[row], n_items_));
    }
    py::array_t<int32_t> ids({rows, static_cast<py::ssize_t>(width)});
    py::array_t<int32_t> lengths(rows);
    const float* query = queries.data();
    int32_t* out = ids.mutable_data();
    int32_t* found = lengths.mutable_data();
    {
      py::gil_scoped_release release;
      std::shared_lock<std::shared_mutex> open(mapping_);  // Close waits for lookups under way
      if (nodes_ == nullptr) throw std::runtime_error("the index was closed");
      thread_local Walk walk;
      if (walk.seen.size() < static_cast<size_t>(n_items_)) walk.seen.resize(n_items_, 0);
      for (py::ssize_t row = 0; row < rows; ++row) {
        found[row] = Nearest(query + row * dimension_, wanted[row], search_k, &walk, out + row * width);
      }
    }
    return {ids, lengths};
  }

  // Unmap the file; later searches raise. Waits for searches under way.
  void Close() {
    std::unique_lock<std::shared_mutex> closing(mapping_);
    if (nodes_ != nullptr) munmap(const_cast<char*>(nodes_), file_bytes_);
    nodes_ = nullptr;
  }

 private:
  // What one thread's lookups reuse from query to query (and from index to index: marks only grow). The
  // marks take 4 bytes per item in each thread that searches (4 MB at a million items).
  struct Walk {
    std::vector<std::pair<float, int32_t>> frontier;  // a max-heap: the largest bound is walked next
    std::vector<int32_t> candidates;
    std::vector<std::pair<float, int32_t>> scored;
    std::vector<uint32_t> seen;  // seen[item] == mark: already scored in this query
    uint32_t mark = 0;
  };

  const char* Node(int32_t index) const { return nodes_ + static_cast<size_t>(index) * node_bytes_; }
  static int32_t Descendants(const char* node) { return Load<int32_t>(node); }
  static const int32_t* Children(const char* node) { return reinterpret_cast<const int32_t*>(node + 4); }
  static float Norm(const char* node) { return Load<float>(node + 4); }
  static const float* Vector(const char* node) { return reinterpret_cast<const float*>(node + kHeaderBytes); }
  template <typename T>
  static T Load(const char* at) {
    T value;
    std::memcpy(&value, at, sizeof(T));
    return value;
  }

  int32_t Nearest(const float* query, int32_t count, int search_k, Walk* walk, int32_t* out) const {
    if (count <= 0) return 0;
    // As Annoy: -1 is `count` per tree; any other negative value, no limit.
    const size_t budget = search_k == -1 ? static_cast<size_t>(count) * roots_.size() : static_cast<size_t>(search_k);
    count = std::min(count, n_items_);
    Gather(query, budget, walk);
    Score(query, walk);
    std::vector<std::pair<float, int32_t>>& scored = walk->scored;
    const size_t found = std::min(static_cast<size_t>(count), scored.size());
    std::partial_sort(scored.begin(), scored.begin() + found, scored.end());
    for (size_t rank = 0; rank < found; ++rank) out[rank] = scored[rank].second;
    return static_cast<int32_t>(found);
  }

  // Walk the trees best first until `budget` candidates (repeats included) are gathered. In a sound file
  // every node has one parent, so a walk visits at most every node once; the cap ends a damaged one whose
  // children lead back up.
  void Gather(const float* query, size_t budget, Walk* walk) const {
    std::vector<std::pair<float, int32_t>>& frontier = walk->frontier;
    std::vector<int32_t>& candidates = walk->candidates;
    frontier.clear();
    candidates.clear();
    for (int32_t root : roots_) frontier.emplace_back(std::numeric_limits<float>::infinity(), root);
    std::make_heap(frontier.begin(), frontier.end());
    for (int32_t visits = 0; candidates.size() < budget && !frontier.empty() && visits < n_nodes_; ++visits) {
      std::pop_heap(frontier.begin(), frontier.end());
      const auto [bound, index] = frontier.back();
      frontier.pop_back();
      const char* node = Node(index);
      const int32_t descendants = Descendants(node);
      if (descendants == 1 && index < n_items_) {
        candidates.push_back(index);
      } else if (descendants <= leaf_capacity_) {
        const int32_t* children = Children(node);
        candidates.insert(candidates.end(), children, children + std::max(descendants, 0));
      } else {
        const float margin = Dot(Vector(node), query, dimension_);
        const int32_t* children = Children(node);
        Push(frontier, std::min(bound, margin), children[1]);
        Push(frontier, std::min(bound, -margin), children[0]);
      }
    }
  }

  void Push(std::vector<std::pair<float, int32_t>>& frontier, float bound, int32_t child) const {
    if (child < 0 || child >= n_nodes_) return;  // a damaged file: skip the branch rather than read past it
    frontier.emplace_back(bound, child);
    std::push_heap(frontier.begin(), frontier.end());
  }

  // The angular distance (2 - 2 cos, as Annoy reports it squared) of every distinct gathered item.
  void Score(const float* query, Walk* walk) const {
    if (++walk->mark == 0) {  // wrapped: forget every mark
      std::fill(walk->seen.begin(), walk->seen.end(), 0);
      walk->mark = 1;
    }
    const float query_norm = Dot(query, query, dimension_);
    walk->scored.clear();
    for (int32_t item : walk->candidates) {
      if (item < 0 || item >= n_items_ || walk->seen[item] == walk->mark) continue;
      walk->seen[item] = walk->mark;
      const char* node = Node(item);
      if (Descendants(node) != 1) continue;  // an id never added to the index
      const float norm = Norm(node);
      const float item_norm = norm != 0 ? norm : Dot(Vector(node), Vector(node), dimension_);
      const float both = query_norm * item_norm;
      const float cosine_part = Dot(query, Vector(node), dimension_);
      const float distance = both > 0 ? static_cast<float>(2.0 - 2.0 * cosine_part / std::sqrt(both)) : 2.0f;
      walk->scored.emplace_back(distance, item);
    }
  }

  // An OSError of the errno (FileNotFoundError, PermissionError, ...) naming the file, as open() raises.
  [[noreturn]] static void RaiseOSError(int error, const std::string& path) {
    errno = error;
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
    throw py::error_already_set();
  }

  void Map(const std::string& path) {
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) RaiseOSError(errno, path);
    struct stat info;
    if (fstat(fd, &info) != 0) {
      const int error = errno;
      close(fd);
      RaiseOSError(error, path);
    }
    file_bytes_ = static_cast<size_t>(info.st_size);
    if (file_bytes_ == 0 || file_bytes_ % node_bytes_ != 0) {
      close(fd);
      throw std::runtime_error(path + " is not an Annoy index of dimension " + std::to_string(dimension_));
    }
    void* mapped = mmap(nullptr, file_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (mapped == MAP_FAILED) RaiseOSError(errno, path);
    nodes_ = static_cast<const char*>(mapped);
    n_nodes_ = static_cast<int32_t>(file_bytes_ / node_bytes_);
    leaf_capacity_ = static_cast<int32_t>((node_bytes_ - 4) / sizeof(int32_t));
  }

  void FindRoots(const std::string& path) {
    const int32_t items = Descendants(Node(n_nodes_ - 1));
    for (int32_t index = n_nodes_ - 1; index >= 0 && Descendants(Node(index)) == items; --index) {
      roots_.push_back(index);
    }
    // Annoy writes the last tree's root both in place and among the copies at the end; drop the former.
    if (roots_.size() > 1 && Children(Node(roots_.front()))[0] == Children(Node(roots_.back()))[0]) {
      roots_.pop_back();
    }
    if (items <= 0 || items > n_nodes_) {
      Close();
      throw std::runtime_error(path + " is not an Annoy index of dimension " + std::to_string(dimension_));
    }
    n_items_ = items;
  }

  const int dimension_;
  const size_t node_bytes_;
  const char* nodes_ = nullptr;
  size_t file_bytes_ = 0;
  int32_t n_nodes_ = 0;
  int32_t n_items_ = 0;
  int32_t leaf_capacity_ = 0;
  std::vector<int32_t> roots_;
  std::shared_mutex mapping_;
};

}  // namespace

PYBIND11_MODULE(_annoy_search, module) {
  module.doc() = "Batched lookups in an Annoy index file (angular), without the GIL.";
  py::class_<AnnoyForest>(module, "AnnoyForest")
      .def(py::init<const std::string&, int>(), py::arg("path"), py::arg("dimension"))
      .def_property_readonly("n_items", &AnnoyForest::n_items)
      .def_property_readonly("n_trees", &AnnoyForest::n_trees)
      .def_property_readonly("dimension", &AnnoyForest::dimension)
      .def("search", &AnnoyForest::Search, py::arg("queries"), py::arg("counts"), py::arg("search_k"))
      .def("close", &AnnoyForest::Close);
}
