#include <iostream>
#include <thread>
#include <vector>
int main() {
    std::vector<int> v(1 << 20, 1);
    long s = 0;
    std::thread t([&] { for (int x : v) s += x; });
    t.join();
    std::cout << "hello from c++ " << s << std::endl;
}
